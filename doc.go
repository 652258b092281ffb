// Package loft is inter-process communication for Go: named channels, direct
// delivery to a node's inbox and publish/subscribe between processes, on one
// host and across hosts, with the same API.
package loft
