package xenopsdv1

// DefaultSocket is the unix socket the daemon serves this API on unless told
// otherwise (xenopsd-ng --socket), and where xopsctl looks for it.
const DefaultSocket = "/run/xenopsd-ng/xenopsd.sock"
