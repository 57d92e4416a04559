#ifndef MADE_CPNG_SHIM_H
#define MADE_CPNG_SHIM_H
#include <png.h>
#endif
