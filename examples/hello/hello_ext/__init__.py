"""hello_ext: the smallest pyisolate extension, used by the examples and tests."""
