#include <kshim/irq.h>
