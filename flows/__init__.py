"""One module per lifecycle stage; a flow only wires tasks."""
