#include <kshim/hyperv.h>
