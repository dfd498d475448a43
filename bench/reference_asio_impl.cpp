// The reference server's own copy of the Asio and Beast implementations: the build defines
// BOOST_ASIO_SEPARATE_COMPILATION and BOOST_BEAST_SEPARATE_COMPILATION globally, so exactly one translation
// unit per executable must compile them. Kept apart from reference_server.cpp so editing the server does not
// recompile Asio.
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
