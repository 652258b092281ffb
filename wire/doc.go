// Package wire is loft's frame format: how bytes travel on a stream transport
// (a Unix socket, TCP, or a byte stream over shared memory).
//
// Every frame is a 12-byte header followed by its payload:
//
//	offset size field
//	0      1    version (currently 1)
//	1      1    type (see Type)
//	2      2    flags, little-endian
//	4      4    payload length, little-endian
//	8      4    CRC32C (Castagnoli) of bytes 0..7 followed by the payload
//
// A Reader checks the version, the length against its limit and the
// checksum before it hands out a frame, so a peer that sends garbage, lies
// about a length or corrupts a frame gets a clear error and no allocation
// larger than the limit. SPEC.md next to this file describes every frame type.
//
// Payload fields are built with the Append* helpers and read with a Decoder,
// which never panics and reports ErrMalformed on truncated or overlong input.
package wire
