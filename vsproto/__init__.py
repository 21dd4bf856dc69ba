"""Protobuf contract tooling: stub builder (``vsproto.build``) and checked stubs (``vsproto.v1``)."""
