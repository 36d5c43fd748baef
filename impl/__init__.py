"""paxwal: a formally specified replicated write-ahead log (protocol cores, trio shells, CLI)."""
