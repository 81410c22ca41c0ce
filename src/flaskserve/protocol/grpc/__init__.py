"""The Open Inference Protocol V2 over gRPC: our proto, its messages, the tensor codec and the
servicer (`servicer.InferenceServicer`) that `server.start` serves."""
