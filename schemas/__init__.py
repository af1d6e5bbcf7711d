"""The shared kernel of taskledger: tables, states and merge rule, wire formats, the store."""
