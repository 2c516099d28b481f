#include <cstdio>
int main() { std::puts("xtuner"); return 0; }
