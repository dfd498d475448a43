// ray::http TLS client setup shared by every outgoing https connection (job callbacks, `ray model pull`).
//
// Contract:
// - tls_client() is the process's one client context: TLS 1.2 or newer, peer verification on, trust from the
//   system store through OpenSSL's default verify paths (so SSL_CERT_FILE / SSL_CERT_DIR are honoured). It is
//   made on first use (a process that never speaks TLS loads no trust store) and never destroyed (OpenSSL's
//   exit handlers may run first). When it cannot be made, `context` is null and `error` says why.
// - prepare_peer_check() arms one connection before its handshake: SNI and a host-name check for a name, an
//   IP-address check (and no SNI, RFC 6066) for a literal; partial wildcards are refused.
// - handshake_failure() words a failed handshake, adding OpenSSL's verify result when the chain or name was
// the
//   cause ("certificate verify failed (self-signed certificate in certificate chain)").
// Asio's TLS implementation is compiled in tls.cpp, once for the project.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <boost/system/error_code.hpp>

#include <memory>
#include <string>

typedef struct ssl_st SSL;

namespace ray::http {

struct tls_client_setup {
  std::unique_ptr<boost::asio::ssl::context> context;
  std::string error;
};
tls_client_setup const& tls_client();

// False when OpenSSL refused a parameter (the connection must not go ahead).
bool prepare_peer_check(SSL* ssl, std::string const& host, bool host_is_ip_literal);

std::string handshake_failure(SSL* ssl, boost::system::error_code const& ec);

}  // namespace ray::http
