"""The csm.v1 wire contract, shared by the server and every Python client.

`speech_pb2` / `speech_pb2_grpc` are generated from protos/csm/v1/speech.proto by
scripts/gen_protos.sh (committed; tests/test_protos.py fails when they are stale); `wav` is
the streamed WAV framing both sides agree on. Needs grpcio and protobuf only.
"""
