// Package group manages isolation groups on a host: a host and its
// extensions sharing one /dev/shm (a tmpfs with a quota, or, rootless, a
// private directory on a tmpfs the user can write) and one socket directory,
// created with the first member, ended with the last, locked across
// processes. Package sandbox opens groups for the faces.
package group
