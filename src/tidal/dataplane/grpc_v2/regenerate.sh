#!/bin/sh
# Regenerate the committed OIP v2 gRPC stubs from KServe's grpc_predict_v2.proto (Apache-2.0,
# copied unchanged from kserve/kserve python/kserve/kserve/protocol/grpc/). Run from anywhere:
#   sh src/tidal/dataplane/grpc_v2/regenerate.sh
# Needs grpcio-tools (dev extra). Two edits after protoc, both so Tidal can share a process
# with other OIP clients (tritonclient.grpc and kserve register the same `inference.*` names in
# protobuf's default pool and cannot be imported together):
#   1. the messages go into a private descriptor pool, not the default one;
#   2. the service module imports the messages from this package.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. grpc_predict_v2.proto
sed -i 's/_descriptor_pool.Default()/_descriptor_pool.DescriptorPool()/' grpc_predict_v2_pb2.py
sed -i 's/^import grpc_predict_v2_pb2 as/from tidal.dataplane.grpc_v2 import grpc_predict_v2_pb2 as/' \
  grpc_predict_v2_pb2_grpc.py
