/* SPDX-License-Identifier: MIT */
/*
 * kshim device: struct device, resources, NUMA and printing through a device
 * (include/linux/device.h, include/linux/ioport.h, include/linux/dev_printk.h).
 */
#ifndef KSHIM_DEVICE_H
#define KSHIM_DEVICE_H

#include <kshim/core.h>

struct irq_domain;
struct fwnode_handle;

/* Only the fields the driver touches, plus the runtime's own state. */
struct device {
	struct device *parent;
	void *driver_data;
	int numa_node;
	struct irq_domain *msi_domain;
	/* 5.10: list of struct msi_desc (include/linux/msi.h: dev_to_msi_list). */
	struct list_head msi_list;
	/* The runtime's per-device state (devres list, 6.1 MSI descriptors, name). */
	void *kshim;
};

static inline void *dev_get_drvdata(const struct device *dev)
{
	return dev->driver_data;
}
static inline void dev_set_drvdata(struct device *dev, void *data)
{
	dev->driver_data = data;
}
static inline void set_dev_node(struct device *dev, int node)
{
	dev->numa_node = node;
}
static inline void dev_set_msi_domain(struct device *dev, struct irq_domain *d)
{
	dev->msi_domain = d;
}

/* include/linux/dev_printk.h */
__printf(2, 3) void _dev_err(const struct device *dev, const char *fmt, ...);
__printf(2, 3) void _dev_warn(const struct device *dev, const char *fmt, ...);
__printf(2, 3) void _dev_info(const struct device *dev, const char *fmt, ...);
#define dev_err(dev, fmt, ...) _dev_err((dev), fmt, ##__VA_ARGS__)
#define dev_warn(dev, fmt, ...) _dev_warn((dev), fmt, ##__VA_ARGS__)
#define dev_info(dev, fmt, ...) _dev_info((dev), fmt, ##__VA_ARGS__)
#define dev_level_once(fn, dev, fmt, ...) do { \
	static bool __kprinted; \
	if (!__kprinted) { \
		__kprinted = true; \
		fn((dev), fmt, ##__VA_ARGS__); \
	} \
} while (0)
#define dev_err_once(dev, fmt, ...) dev_level_once(_dev_err, dev, fmt, ##__VA_ARGS__)
#define dev_warn_once(dev, fmt, ...) dev_level_once(_dev_warn, dev, fmt, ##__VA_ARGS__)

/* ---- resources (include/linux/ioport.h) ---- */
struct resource {
	resource_size_t start;
	resource_size_t end;
	const char *name;
	unsigned long flags;
	struct resource *parent, *sibling, *child;
};
#define IORESOURCE_MEM 0x00000200
#define IORESOURCE_WINDOW 0x00200000
#define IORESOURCE_BUSY 0x80000000
static inline resource_size_t resource_size(const struct resource *res)
{
	return res->end - res->start + 1;
}

/* ---- MMIO (arch/x86/include/asm/io.h): out of line so the runtime sees each access ---- */
void __iomem *ioremap(resource_size_t offset, unsigned long size);
void iounmap(volatile void __iomem *addr);
u8 readb(const volatile void __iomem *addr);
u16 readw(const volatile void __iomem *addr);
u32 readl(const volatile void __iomem *addr);
void writeb(u8 value, volatile void __iomem *addr);
void writew(u16 value, volatile void __iomem *addr);
void writel(u32 value, volatile void __iomem *addr);

/* ---- NUMA (include/linux/nodemask.h, include/linux/numa.h) ---- */
int num_possible_nodes(void);
int numa_map_to_online_node(int node);

#endif /* KSHIM_DEVICE_H */
