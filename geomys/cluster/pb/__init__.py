"""Generated gRPC stubs (scripts/gen_protos.sh); never edited by hand."""
