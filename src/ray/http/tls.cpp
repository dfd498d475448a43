// The shared TLS client context and per-connection peer checks (tls.hpp).
#include "ray/http/tls.hpp"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <exception>

// Asio's TLS part is compiled here, once (the project builds Asio with BOOST_ASIO_SEPARATE_COMPILATION and
// asio_impl.cpp compiles the rest).
#include <boost/asio/ssl/impl/src.hpp>

namespace ray::http {

tls_client_setup const& tls_client() {
  static tls_client_setup const* const setup = [] {
    auto s = std::make_unique<tls_client_setup>();
    try {
      auto ctx = std::make_unique<boost::asio::ssl::context>(boost::asio::ssl::context::tls_client);
      boost::system::error_code ec;
      ctx->set_default_verify_paths(ec);
      if (!ec) ctx->set_verify_mode(boost::asio::ssl::verify_peer, ec);
      if (ec) {
        s->error = "loading the system trust store failed: " + ec.message();
      } else {
        SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
        SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
        s->context = std::move(ctx);
      }
    } catch (std::exception const& e) {
      s->error = std::string("creating the TLS context failed: ") + e.what();
    }
    return s.release();
  }();
  return *setup;
}

bool prepare_peer_check(SSL* ssl, std::string const& host, bool host_is_ip_literal) {
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return host_is_ip_literal ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1
                            : SSL_set_tlsext_host_name(ssl, host.c_str()) == 1 &&
                                  X509_VERIFY_PARAM_set1_host(param, host.data(), host.size()) == 1;
}

std::string handshake_failure(SSL* ssl, boost::system::error_code const& ec) {
  std::string out = ec.message();
  if (auto const v = SSL_get_verify_result(ssl); v != X509_V_OK)
    out += std::string(" (") + X509_verify_cert_error_string(v) + ")";
  return out;
}

}  // namespace ray::http
