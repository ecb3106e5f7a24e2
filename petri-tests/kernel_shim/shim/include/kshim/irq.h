/* SPDX-License-Identifier: MIT */
/*
 * kshim irq: cpumasks, the irq_data hierarchy, irq chips and domains, and MSI descriptors
 * (include/linux/cpumask.h, include/linux/irq.h, include/linux/irqdomain.h,
 * include/linux/msi.h, arch/x86/include/asm/hw_irq.h, arch/x86/include/asm/irqdomain.h).
 *
 * The driver never calls its own chip callbacks: the runtime's MSI core (runtime/msi.c) does,
 * in the order kernel/irq/msi.c and drivers/pci/msi/ do.
 */
#ifndef KSHIM_IRQ_H
#define KSHIM_IRQ_H

#include <kshim/core.h>
#include <kshim/device.h>

/* ---- cpumasks: at most 64 CPUs, one word (include/linux/cpumask.h) ---- */
#define NR_CPUS 64
struct cpumask {
	unsigned long bits[BITS_TO_LONGS(NR_CPUS)];
};
/* CONFIG_CPUMASK_OFFSTACK, as Debian builds it: allocation can fail. */
typedef struct cpumask *cpumask_var_t;
extern struct cpumask __cpu_online_mask;
extern unsigned int nr_cpu_ids;
#define cpu_online_mask ((const struct cpumask *)&__cpu_online_mask)
#define cpumask_bits(m) ((m)->bits)
static inline bool alloc_cpumask_var(cpumask_var_t *mask, gfp_t flags)
{
	*mask = kmalloc(sizeof(struct cpumask), flags);
	return *mask != NULL;
}
static inline void free_cpumask_var(cpumask_var_t mask)
{
	kfree(mask);
}
static inline void cpumask_and(struct cpumask *dst, const struct cpumask *a,
			       const struct cpumask *b)
{
	for (unsigned int i = 0; i < BITS_TO_LONGS(NR_CPUS); i++)
		dst->bits[i] = a->bits[i] & b->bits[i];
}
static inline unsigned int cpumask_next_and(int n, const struct cpumask *a,
					    const struct cpumask *b)
{
	for (unsigned int c = n + 1; c < nr_cpu_ids; c++)
		if (test_bit(c, a->bits) && test_bit(c, b->bits))
			return c;
	return nr_cpu_ids;
}
static inline unsigned int cpumask_first_and(const struct cpumask *a,
					     const struct cpumask *b)
{
	return cpumask_next_and(-1, a, b);
}
#define for_each_cpu_and(cpu, a, b) \
	for ((cpu) = cpumask_next_and(-1, (a), (b)); (cpu) < nr_cpu_ids; \
	     (cpu) = cpumask_next_and((cpu), (a), (b)))
/* lib/cpumask.c: next set CPU after n, wrapping once around to start. */
unsigned int cpumask_next_wrap(int n, const struct cpumask *mask, int start, bool wrap);

/* ---- MSI messages and descriptors (include/linux/msi.h) ---- */
struct msi_msg {
	u32 address_lo;
	u32 address_hi;
	u32 data;
};
struct kshim_msi_attrib {
	u8 is_msix : 1;
	u8 multiple : 3;
	u8 multi_cap : 3;
	u8 can_mask : 1;
	u8 is_64 : 1;
	u8 is_virtual : 1;
	unsigned int default_irq;
};
struct pci_msi_desc {
	u32 msi_mask;
	struct kshim_msi_attrib msi_attrib;
	void __iomem *mask_base;
};
struct msi_desc {
	/* 5.10: entry in dev->msi_list. */
	struct list_head list;
	unsigned int irq;
	unsigned int nvec_used;
	struct device *dev;
	struct msi_msg msg;
	u16 msi_index;
#if KSHIM_KVER >= 601
	struct pci_msi_desc pci;
#else
	struct kshim_msi_attrib msi_attrib;
#endif
	/* The runtime's: this vector's MSI-X table entry (mapped), or NULL. */
	void __iomem *kshim_entry;
};
#if KSHIM_KVER >= 601
#define KSHIM_MSI_ATTRIB(desc) ((desc)->pci.msi_attrib)
#else
#define KSHIM_MSI_ATTRIB(desc) ((desc)->msi_attrib)
#endif
struct pci_dev *msi_desc_to_pci_dev(struct msi_desc *desc);

/* 5.10: descriptors hang off the device's list. */
#define dev_to_msi_list(dev) (&(dev)->msi_list)
#define for_each_msi_entry(desc, dev) list_for_each_entry((desc), dev_to_msi_list((dev)), list)
#define for_each_pci_msi_entry(desc, pdev) for_each_msi_entry((desc), &(pdev)->dev)

/* 6.1: descriptors are walked under the device's MSI lock with a filter. */
enum msi_desc_filter {
	MSI_DESC_ALL,
	MSI_DESC_NOTASSOCIATED,
	MSI_DESC_ASSOCIATED,
};
void msi_lock_descs(struct device *dev);
void msi_unlock_descs(struct device *dev);
struct msi_desc *msi_first_desc(struct device *dev, enum msi_desc_filter filter);
struct msi_desc *msi_next_desc(struct device *dev, enum msi_desc_filter filter);
#define msi_for_each_desc(desc, dev, filter) \
	for ((desc) = msi_first_desc((dev), (filter)); (desc); \
	     (desc) = msi_next_desc((dev), (filter)))

/* ---- irq data hierarchy (include/linux/irq.h) ---- */
struct irq_desc;
struct irq_domain;
struct fwnode_handle;
struct irq_chip;
struct irq_common_data {
	unsigned int state_use_accessors;
	void *handler_data;
	struct msi_desc *msi_desc;
	struct cpumask affinity;
	struct cpumask effective_affinity;
};
struct irq_data {
	u32 mask;
	unsigned int irq;
	irq_hw_number_t hwirq;
	struct irq_common_data *common;
	struct irq_chip *chip;
	struct irq_domain *domain;
	struct irq_data *parent_data;
	void *chip_data;
};
static inline struct msi_desc *irq_data_get_msi_desc(struct irq_data *d)
{
	return d->common->msi_desc;
}
static inline void *irq_data_get_irq_chip_data(struct irq_data *d)
{
	return d->chip_data;
}
#if KSHIM_KVER >= 601
static inline const struct cpumask *irq_data_get_effective_affinity_mask(struct irq_data *d)
#else
static inline struct cpumask *irq_data_get_effective_affinity_mask(struct irq_data *d)
#endif
{
	return &d->common->effective_affinity;
}
struct irq_data *irq_get_irq_data(unsigned int irq);

typedef void (*irq_flow_handler_t)(struct irq_desc *desc);
void handle_edge_irq(struct irq_desc *desc);

struct irq_chip {
	const char *name;
	void (*irq_ack)(struct irq_data *data);
	void (*irq_mask)(struct irq_data *data);
	void (*irq_unmask)(struct irq_data *data);
	void (*irq_eoi)(struct irq_data *data);
	int (*irq_set_affinity)(struct irq_data *data, const struct cpumask *dest, bool force);
	int (*irq_retrigger)(struct irq_data *data);
	int (*irq_set_type)(struct irq_data *data, unsigned int flow_type);
	void (*irq_compose_msi_msg)(struct irq_data *data, struct msi_msg *msg);
};
/* kernel/irq/chip.c: forward to the parent level of the hierarchy. */
void irq_chip_ack_parent(struct irq_data *data);
void irq_chip_mask_parent(struct irq_data *data);
void irq_chip_unmask_parent(struct irq_data *data);
int irq_chip_set_affinity_parent(struct irq_data *data, const struct cpumask *dest, bool force);
int irq_chip_retrigger_hierarchy(struct irq_data *data);

/* ---- irq domains (include/linux/irqdomain.h) ---- */
struct fwnode_handle *irq_domain_alloc_named_fwnode(const char *name);
void irq_domain_free_fwnode(struct fwnode_handle *fwnode);
void irq_domain_remove(struct irq_domain *domain);
struct irq_data *irq_domain_get_irq_data(struct irq_domain *domain, unsigned int virq);

/* ---- x86 vector domain (arch/x86/include/asm/hw_irq.h, irqdomain.h, apic.h) ---- */
struct irq_cfg {
	unsigned int dest_apicid;
	unsigned int vector;
};
struct irq_cfg *irqd_cfg(struct irq_data *irq_data);
extern struct irq_domain *x86_vector_domain;
enum irq_alloc_type {
	X86_IRQ_ALLOC_TYPE_PCI_MSI = 1,
	X86_IRQ_ALLOC_TYPE_PCI_MSIX,
};
#define X86_IRQ_ALLOC_CONTIGUOUS_VECTORS 0x1
#define X86_IRQ_ALLOC_LEGACY 0x2
struct irq_alloc_info {
	enum irq_alloc_type type;
	u32 flags;
	u32 devid;
	irq_hw_number_t hwirq;
	const struct cpumask *mask;
	struct msi_desc *desc;
	void *data;
};
typedef struct irq_alloc_info msi_alloc_info_t;
#define APIC_DELIVERY_MODE_FIXED 0
#define dest_Fixed 0

/* ---- MSI irq domains (include/linux/msi.h, drivers/pci/msi/irqdomain.c) ---- */
struct msi_domain_info;
struct msi_domain_ops {
	int (*msi_prepare)(struct irq_domain *domain, struct device *dev, int nvec,
			   msi_alloc_info_t *arg);
	void (*msi_free)(struct irq_domain *domain, struct msi_domain_info *info,
			 unsigned int virq);
};
struct msi_domain_info {
	u32 flags;
	struct msi_domain_ops *ops;
	struct irq_chip *chip;
	void *chip_data;
	irq_flow_handler_t handler;
	void *handler_data;
	const char *handler_name;
	void *data;
};
#define MSI_FLAG_USE_DEF_DOM_OPS (1 << 0)
#define MSI_FLAG_USE_DEF_CHIP_OPS (1 << 1)
#define MSI_FLAG_MULTI_PCI_MSI (1 << 2)
#define MSI_FLAG_PCI_MSIX (1 << 3)
#define MSI_FLAG_ACTIVATE_EARLY (1 << 4)
#define MSI_FLAG_MUST_REACTIVATE (1 << 5)
struct irq_domain *pci_msi_create_irq_domain(struct fwnode_handle *fwnode,
					     struct msi_domain_info *info,
					     struct irq_domain *parent);
int pci_msi_prepare(struct irq_domain *domain, struct device *dev, int nvec,
		    msi_alloc_info_t *arg);
void pci_msi_mask_irq(struct irq_data *data);
void pci_msi_unmask_irq(struct irq_data *data);

/* 5.10: the legacy per-bus MSI controller (include/linux/msi.h). */
struct msi_controller {
	struct device *dev;
};

#endif /* KSHIM_IRQ_H */
