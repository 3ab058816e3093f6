"""Looking inside a compiled model: one PE explained (`explain`), decode cycles by phase from
the marks (`phases`) and the op graph of a step as a networkx view (`graph`)."""
