#include <kshim/core.h>
