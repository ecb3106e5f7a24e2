#include <kshim/sync.h>
