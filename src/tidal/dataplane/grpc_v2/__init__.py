"""Generated OIP v2 gRPC stubs (KServe's grpc_predict_v2.proto); regenerate with
`sh src/tidal/dataplane/grpc_v2/regenerate.sh`. Do not edit the *_pb2* files by hand."""
