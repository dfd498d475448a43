// The one translation unit that compiles Boost.Asio and Boost.Beast (BOOST_*_SEPARATE_COMPILATION is defined
// for the whole project), so every other file only parses their declarations.
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
