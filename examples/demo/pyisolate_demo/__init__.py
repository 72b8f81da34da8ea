"""pyisolate-oci demo: a host and an extension sharing tensors through the group's /dev/shm."""
