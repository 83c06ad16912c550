// Package defaults holds the settings the daemon and its clients agree on
// without being told: where the API is served.
package defaults

// Socket is the unix socket the daemon serves the xenopsd.v1 API on unless
// told otherwise (xenopsd-ng --socket), and where xopsctl looks for it.
const Socket = "/run/xenopsd-ng/xenopsd.sock"
