#include <kshim/pci.h>
