"""pyisolate-oci torch example: a torch host and a torch extension, each in
its own container of one isolation group, share CPU tensors zero-copy with
pyisolate's wire format and torch's file_system strategy."""
