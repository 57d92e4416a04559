#ifndef MADE_CGZIP_SHIM_H
#define MADE_CGZIP_SHIM_H
#include <zlib.h>
#endif
