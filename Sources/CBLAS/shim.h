#ifndef MADE_CBLAS_SHIM_H
#define MADE_CBLAS_SHIM_H
#include <cblas.h>
/* OpenBLAS extensions: thread control. Declared in OpenBLAS's cblas.h; repeated here for other vendors' headers. */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
#endif
