"""Code generated from proto/jobd/v1/jobd.proto by sdks/python/scripts/generate.py.
DO NOT EDIT: run the script instead.

`jobd_pb2` holds the messages, `jobd_pb2_grpc` the service stubs. The SDK
(`jobd.Client`, `jobd.Worker`) wraps them; they are importable for anything
the SDK does not cover yet.
"""
GENERATED_WITH = "grpcio-tools 1.75.1"
