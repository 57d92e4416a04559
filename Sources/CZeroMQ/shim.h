#ifndef MADE_CZEROMQ_SHIM_H
#define MADE_CZEROMQ_SHIM_H
#include <zmq.h>
#endif
