"""The link between the machines: KV-cache transfer time (`transfer`) and the scatter of a
prefilled cache into the mesh's SRAM layout (`layout`)."""
