#include <cstdio>
int main() { std::puts("ray " RAY_VERSION); }
