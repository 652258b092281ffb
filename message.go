package loft

import "os"

// Message is one message as a receiver sees it. Data is owned by the
// receiver from then on: loft never reuses its memory.
type Message struct {
	// Data is the payload.
	Data []byte
	// From is the id of the sending node.
	From string
	// ID is the sender's sequence number for this message on this channel,
	// unique per sending Sender, increasing in send order.
	ID uint64
	// Files are open files passed with the message (Unix sockets only).
	// The receiver owns them and must close them.
	Files []*os.File

	loan *loanRef // set when Data lives in a sender's loan pool
}

// Loaned reports whether Data lives in shared memory lent by the sender
// (see Sender.Loan); such a message must be released with Release.
func (m Message) Loaned() bool { return m.loan != nil }

// Release gives a loaned message's memory back to its sender; Data must not
// be used afterwards. For other messages it does nothing. Calling it more
// than once is harmless.
func (m Message) Release() { m.loan.release() }
