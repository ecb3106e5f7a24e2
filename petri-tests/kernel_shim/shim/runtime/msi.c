/* SPDX-License-Identifier: MIT */
/*
 * The irq-domain and MSI core (kernel/irq/irqdomain.c, kernel/irq/msi.c, kernel/irq/chip.c,
 * kernel/irq/manage.c, drivers/pci/msi/msi.c, drivers/pci/msi/irqdomain.c,
 * arch/x86/kernel/apic/vector.c, arch/x86/kernel/apic/msi.c).
 *
 * Each Linux irq is a two-level hierarchy: the MSI level (the driver's chip and domain) over
 * the x86 vector level. The driver's callbacks are made in the kernel's order:
 *   alloc: msi_prepare, then per irq early (reservation) activation: compose and write;
 *   request_irq: reactivation with the real vector (compose again), then unmask;
 *   free_irq: mask, deactivate (a zero message);
 *   free vectors: msi_free per irq, then the descriptors go.
 * Activation, compose and unmask run under the irq descriptor's lock with interrupts off:
 * the caller is atomic for that time.
 */
#include "rt.h"

#define FIRST_VIRQ 24
#define MAX_IRQS 512
#define MANAGED_IRQ_SHUTDOWN_VECTOR 0xef
#define FIRST_DEVICE_VECTOR 0x21

struct fwnode_handle {
	char name[64];
};

struct irq_domain {
	struct irq_domain *next;
	struct fwnode_handle *fwnode;
	struct msi_domain_info *info;
	struct irq_domain *parent;
};

struct kshim_irq {
	bool used;
	struct irq_domain *domain;
	struct irq_common_data common;
	struct irq_data msi_level;
	struct irq_data vec_level;
	struct irq_cfg cfg;
	bool requested;
	bool masked;
};

static struct kshim_irq irqs[MAX_IRQS];
static struct irq_domain *domains;
static unsigned int next_vector = FIRST_DEVICE_VECTOR;
static unsigned int next_cpu;

/* ---- CPUs: two online by default ---- */
struct cpumask __cpu_online_mask = { { 0x3 } };
unsigned int nr_cpu_ids = 2;

/* lib/cpumask.c: the next set bit after n, wrapping around once past start. */
unsigned int cpumask_next_wrap(int n, const struct cpumask *mask, int start, bool wrap)
{
	unsigned int next;

	for (;;) {
		next = n + 1;
		while (next < nr_cpu_ids && !test_bit(next, mask->bits))
			next++;
		if (wrap && n < start && (int)next >= start)
			return nr_cpu_ids;
		if (next >= nr_cpu_ids) {
			if (wrap)
				return nr_cpu_ids;
			wrap = true;
			n = -1;
			continue;
		}
		return next;
	}
}

/* ---- the x86 vector domain and its chip (arch/x86/kernel/apic/vector.c) ---- */
static struct irq_domain vector_domain;
struct irq_domain *x86_vector_domain = &vector_domain;

static void vector_ack(struct irq_data *d)
{
}

/* Affinity changes only move the effective target; the MSI is retargeted at the next unmask. */
static int vector_set_affinity(struct irq_data *d, const struct cpumask *dest, bool force)
{
	unsigned int cpu = cpumask_first_and(dest, cpu_online_mask);

	if (cpu >= nr_cpu_ids)
		return -EINVAL;
	memset(&d->common->effective_affinity, 0, sizeof(struct cpumask));
	set_bit(cpu, d->common->effective_affinity.bits);
	return 0;
}

static struct irq_chip vector_chip = {
	.name = "APIC",
	.irq_ack = vector_ack,
	.irq_set_affinity = vector_set_affinity,
};

static struct kshim_irq *irq_of(unsigned int virq)
{
	if (virq < FIRST_VIRQ || virq >= MAX_IRQS || !irqs[virq].used)
		return NULL;
	return &irqs[virq];
}

/* ---- fwnodes and domains (kernel/irq/irqdomain.c) ---- */
struct fwnode_handle *irq_domain_alloc_named_fwnode(const char *name)
{
	struct fwnode_handle *fw;

	KSHIM_CALL("irq_domain_alloc_named_fwnode");
	fw = kzalloc(sizeof(*fw), GFP_KERNEL);
	if (fw)
		snprintf(fw->name, sizeof(fw->name), "%s", name);
	return fw;
}

void irq_domain_free_fwnode(struct fwnode_handle *fwnode)
{
	KSHIM_CALL("irq_domain_free_fwnode");
	kfree(fwnode);
}

/*
 * drivers/pci/msi/irqdomain.c: the default ops and chip ops fill in what the driver left
 * NULL; the domain activates early and, with reservation mode, must reactivate.
 */
struct irq_domain *pci_msi_create_irq_domain(struct fwnode_handle *fwnode,
					     struct msi_domain_info *info,
					     struct irq_domain *parent)
{
	struct irq_domain *d;

	KSHIM_CALL("pci_msi_create_irq_domain");
	info->flags |= MSI_FLAG_ACTIVATE_EARLY | MSI_FLAG_MUST_REACTIVATE;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return NULL;
	d->fwnode = fwnode;
	d->info = info;
	d->parent = parent;
	d->next = domains;
	domains = d;
	return d;
}

void irq_domain_remove(struct irq_domain *domain)
{
	KSHIM_CALL("irq_domain_remove");
	for (struct irq_domain **pp = &domains; *pp; pp = &(*pp)->next)
		if (*pp == domain) {
			*pp = domain->next;
			kfree(domain);
			return;
		}
	kshim_event(EV_BUG, "irq_domain_remove of an unknown domain");
}

struct irq_domain *kshim_msi_domain_for_fwnode(struct fwnode_handle *fwnode)
{
	for (struct irq_domain *d = domains; d; d = d->next)
		if (fwnode && d->fwnode == fwnode)
			return d;
	return NULL;
}

struct irq_data *irq_domain_get_irq_data(struct irq_domain *domain, unsigned int virq)
{
	struct kshim_irq *irq = irq_of(virq);

	KSHIM_CALL("irq_domain_get_irq_data");
	if (!irq)
		return NULL;
	if (domain == irq->domain)
		return &irq->msi_level;
	if (domain == x86_vector_domain)
		return &irq->vec_level;
	return NULL;
}

struct irq_data *irq_get_irq_data(unsigned int virq)
{
	struct kshim_irq *irq = irq_of(virq);

	KSHIM_CALL("irq_get_irq_data");
	return irq ? &irq->msi_level : NULL;
}

struct irq_cfg *irqd_cfg(struct irq_data *d)
{
	struct kshim_irq *irq = d ? irq_of(d->irq) : NULL;

	KSHIM_CALL("irqd_cfg");
	return irq ? &irq->cfg : NULL;
}

/* ---- chip helpers (kernel/irq/chip.c) ---- */
void irq_chip_ack_parent(struct irq_data *data)
{
	data = data->parent_data;
	data->chip->irq_ack(data);
}

void irq_chip_mask_parent(struct irq_data *data)
{
	data = data->parent_data;
	data->chip->irq_mask(data);
}

void irq_chip_unmask_parent(struct irq_data *data)
{
	data = data->parent_data;
	data->chip->irq_unmask(data);
}

int irq_chip_set_affinity_parent(struct irq_data *data, const struct cpumask *dest, bool force)
{
	data = data->parent_data;
	if (data->chip->irq_set_affinity)
		return data->chip->irq_set_affinity(data, dest, force);
	return -EINVAL;
}

int irq_chip_retrigger_hierarchy(struct irq_data *data)
{
	for (data = data->parent_data; data; data = data->parent_data)
		if (data->chip && data->chip->irq_retrigger)
			return data->chip->irq_retrigger(data);
	return 0;
}

void handle_edge_irq(struct irq_desc *desc)
{
	kshim_event(EV_BUG, "handle_edge_irq called: interrupt delivery is not simulated");
}

/* ---- PCI MSI (arch/x86/kernel/apic/msi.c, drivers/pci/msi/) ---- */
struct pci_dev *msi_desc_to_pci_dev(struct msi_desc *desc)
{
	return container_of(desc->dev, struct pci_dev, dev);
}

int pci_msi_prepare(struct irq_domain *domain, struct device *dev, int nvec,
		    msi_alloc_info_t *arg)
{
	struct msi_desc *desc = list_first_entry(&dev->msi_list, struct msi_desc, list);

	KSHIM_CALL("pci_msi_prepare");
	memset(arg, 0, sizeof(*arg));
	if (KSHIM_MSI_ATTRIB(desc).is_msix) {
		arg->type = X86_IRQ_ALLOC_TYPE_PCI_MSIX;
	} else {
		arg->type = X86_IRQ_ALLOC_TYPE_PCI_MSI;
		/* Until 6.2 the x86 core asked for contiguous vectors for multi-MSI. */
		if (KSHIM_KVER < 602)
			arg->flags |= X86_IRQ_ALLOC_CONTIGUOUS_VECTORS;
	}
	return 0;
}

/*
 * ---- the MSI-X table (drivers/pci/msi/msi.c, include/uapi/linux/pci_regs.h) ----
 * Each entry is 16 bytes in a BAR: address low, address high, data, vector control (bit 0
 * masks). The kernel writes it through an ioremap of the table, so these are MMIO accesses of
 * the function's BAR: to a device the host has torn down, they fault.
 */
#define PCI_MSIX_FLAGS 2
#define PCI_MSIX_FLAGS_QSIZE 0x07ff
#define PCI_MSIX_FLAGS_MASKALL 0x4000
#define PCI_MSIX_FLAGS_ENABLE 0x8000
#define PCI_MSIX_TABLE 4
#define PCI_MSIX_TABLE_BIR 0x7
#define PCI_MSIX_ENTRY_SIZE 16
#define PCI_MSIX_ENTRY_LOWER_ADDR 0
#define PCI_MSIX_ENTRY_UPPER_ADDR 4
#define PCI_MSIX_ENTRY_DATA 8
#define PCI_MSIX_ENTRY_VECTOR_CTRL 12
#define PCI_MSIX_ENTRY_CTRL_MASKBIT 0x1

static void msix_ctrl(struct pci_dev *pdev, u16 clear, u16 set)
{
	u8 cap = kshim_pci_msix_cap(pdev);
	u32 ctrl;

	if (!cap)
		return;
	kshim_pci_read(pdev, cap + PCI_MSIX_FLAGS, 2, &ctrl);
	kshim_pci_write(pdev, cap + PCI_MSIX_FLAGS, 2, (ctrl & ~clear) | set);
}

/* msix_map_region: the table's BAR and offset from the capability; NULL without one. */
static void __iomem *msix_map(struct pci_dev *pdev, unsigned int *entries)
{
	u8 cap = kshim_pci_msix_cap(pdev);
	u32 ctrl, table;
	u64 bar;

	*entries = 0;
	if (!cap)
		return NULL;
	kshim_pci_read(pdev, cap + PCI_MSIX_FLAGS, 2, &ctrl);
	kshim_pci_read(pdev, cap + PCI_MSIX_TABLE, 4, &table);
	bar = kshim_pci_bar_addr(pdev, table & PCI_MSIX_TABLE_BIR);
	if (!bar)
		return NULL;
	*entries = (ctrl & PCI_MSIX_FLAGS_QSIZE) + 1;
	return ioremap(bar + (table & ~PCI_MSIX_TABLE_BIR), *entries * PCI_MSIX_ENTRY_SIZE);
}

static void msix_write_ctrl(struct msi_desc *desc, bool masked)
{
	if (desc->kshim_entry)
		writel(masked ? PCI_MSIX_ENTRY_CTRL_MASKBIT : 0,
		       (char __iomem *)desc->kshim_entry + PCI_MSIX_ENTRY_VECTOR_CTRL);
}

/* The per-vector mask bit (MSI-X vector control; MSI without a mask register: nothing). */
void pci_msi_mask_irq(struct irq_data *data)
{
	struct kshim_irq *irq = irq_of(data->irq);

	KSHIM_CALL("pci_msi_mask_irq");
	if (!irq)
		return;
	irq->masked = true;
	msix_write_ctrl(irq->common.msi_desc, true);
}

void pci_msi_unmask_irq(struct irq_data *data)
{
	struct kshim_irq *irq = irq_of(data->irq);

	KSHIM_CALL("pci_msi_unmask_irq");
	if (!irq)
		return;
	irq->masked = false;
	msix_write_ctrl(irq->common.msi_desc, false);
}

/* irq_chip_compose_msi_msg: the deepest level whose chip composes. */
static void compose(struct kshim_irq *irq, struct msi_msg *msg)
{
	struct irq_data *pos = NULL;

	for (struct irq_data *d = &irq->msi_level; d; d = d->parent_data)
		if (d->chip && d->chip->irq_compose_msi_msg)
			pos = d;
	memset(msg, 0, sizeof(*msg));
	if (pos)
		pos->chip->irq_compose_msi_msg(pos, msg);
}

/*
 * pci_msi_domain_write_msg -> __pci_write_msi_msg: only the descriptor's first irq writes
 * (multi-MSI); the message is cached in the descriptor and, for MSI-X, written to the table.
 */
static void write_msg(struct kshim_irq *irq, const struct msi_msg *msg)
{
	struct msi_desc *desc = irq->common.msi_desc;
	char __iomem *entry = desc->kshim_entry;

	if (desc->irq != irq->msi_level.irq)
		return;
	desc->msg = *msg;
	if (entry) {
		writel(msg->address_lo, entry + PCI_MSIX_ENTRY_LOWER_ADDR);
		writel(msg->address_hi, entry + PCI_MSIX_ENTRY_UPPER_ADDR);
		writel(msg->data, entry + PCI_MSIX_ENTRY_DATA);
	}
}

/* x86_vector_activate: a reservation gets the shutdown vector; else a real one on a CPU. */
static void vector_activate(struct kshim_irq *irq, bool reserve)
{
	unsigned int cpu = 0;

	if (reserve) {
		irq->cfg.vector = MANAGED_IRQ_SHUTDOWN_VECTOR;
	} else {
		irq->cfg.vector = next_vector++;
		if (next_vector > 0xec)
			next_vector = FIRST_DEVICE_VECTOR;
		cpu = next_cpu++ % nr_cpu_ids;
	}
	irq->cfg.dest_apicid = cpu;
	memset(&irq->common.effective_affinity, 0, sizeof(struct cpumask));
	set_bit(cpu, irq->common.effective_affinity.bits);
}

static void activate(struct kshim_irq *irq, bool reserve)
{
	struct msi_msg msg;

	vector_activate(irq, reserve);
	compose(irq, &msg);
	write_msg(irq, &msg);
}

static void free_descs(struct pci_dev *pdev)
{
	struct msi_desc *desc, *tmp;

	list_for_each_entry_safe(desc, tmp, &pdev->dev.msi_list, list) {
		list_del(&desc->list);
		kfree(desc);
	}
}

static unsigned int alloc_virqs(unsigned int n)
{
	for (unsigned int start = FIRST_VIRQ; start + n <= MAX_IRQS; start++) {
		unsigned int k = 0;

		while (k < n && !irqs[start + k].used)
			k++;
		if (k == n)
			return start;
		start += k;
	}
	return 0;
}

int kshim_pci_alloc_irq_vectors(struct pci_dev *pdev, unsigned int nvec, bool msix)
{
	struct irq_domain *domain = pdev->dev.msi_domain;
	struct msi_domain_info *info;
	msi_alloc_info_t arg;
	unsigned int virq;
	int ret;

	void __iomem *table = NULL;
	unsigned int entries = 0;

	if (!domain || !nvec)
		return -ENOSPC;
	info = domain->info;
	if (msix) {
		/* msix_capability_init: enabled with every vector masked while it is set up. */
		msix_ctrl(pdev, 0, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE);
		table = msix_map(pdev, &entries);
		if (table && nvec > entries)
			nvec = entries;
	}
	/* The descriptors (drivers/pci/msi/msi.c msix_setup_msi_descs / msi_setup_msi_desc). */
	for (unsigned int i = 0; i < (msix ? nvec : 1); i++) {
		struct msi_desc *desc = kzalloc(sizeof(*desc), GFP_KERNEL);

		if (!desc) {
			free_descs(pdev);
			return -ENOMEM;
		}
		desc->dev = &pdev->dev;
		desc->nvec_used = msix ? 1 : nvec;
		desc->msi_index = i;
		if (table) {
			desc->kshim_entry = (char __iomem *)table + i * PCI_MSIX_ENTRY_SIZE;
			msix_write_ctrl(desc, true);
		}
		KSHIM_MSI_ATTRIB(desc).is_msix = msix;
		KSHIM_MSI_ATTRIB(desc).is_64 = 1;
		KSHIM_MSI_ATTRIB(desc).can_mask = 1;
		list_add_tail(&desc->list, &pdev->dev.msi_list);
	}
	ret = info->ops->msi_prepare(domain, &pdev->dev, nvec, &arg);
	if (ret) {
		free_descs(pdev);
		return ret;
	}
	virq = alloc_virqs(nvec);
	if (!virq) {
		free_descs(pdev);
		return -ENOSPC;
	}
	/* The hierarchy for each irq (msi_domain_alloc: chip_data starts as info->chip_data). */
	{
		struct msi_desc *desc = list_first_entry(&pdev->dev.msi_list, struct msi_desc, list);

		for (unsigned int i = 0; i < nvec; i++) {
			struct kshim_irq *irq = &irqs[virq + i];

			memset(irq, 0, sizeof(*irq));
			irq->used = true;
			irq->domain = domain;
			irq->common.msi_desc = desc;
			set_bit(0, irq->common.affinity.bits);
			set_bit(1, irq->common.affinity.bits);
			irq->vec_level.irq = virq + i;
			irq->vec_level.common = &irq->common;
			irq->vec_level.chip = &vector_chip;
			irq->vec_level.domain = x86_vector_domain;
			irq->msi_level.irq = virq + i;
			irq->msi_level.hwirq = (pdev->devfn << 11) | i;
			irq->msi_level.common = &irq->common;
			irq->msi_level.chip = info->chip;
			irq->msi_level.domain = domain;
			irq->msi_level.parent_data = &irq->vec_level;
			irq->msi_level.chip_data = info->chip_data;
			if (msix || i == 0)
				desc->irq = virq + i;
			if (msix && i + 1 < nvec)
				desc = list_next_entry(desc, list);
		}
	}
	/* Early activation in reservation mode, under each descriptor's lock. */
	for (unsigned int i = 0; i < nvec; i++) {
		kshim_atomic_enter();
		activate(&irqs[virq + i], true);
		kshim_atomic_exit();
	}
	if (msix) {
		pdev->msix_enabled = 1;
		msix_ctrl(pdev, PCI_MSIX_FLAGS_MASKALL, 0);
	} else {
		pdev->msi_enabled = 1;
	}
	kshim_event(EV_NOTE, "%u %s vectors from irq %u", nvec, msix ? "MSI-X" : "MSI", virq);
	return nvec;
}

unsigned int kshim_pci_irq_vector(struct pci_dev *pdev, unsigned int index)
{
	struct msi_desc *desc;
	unsigned int i = 0;

	list_for_each_entry(desc, &pdev->dev.msi_list, list) {
		if (!KSHIM_MSI_ATTRIB(desc).is_msix)
			return index < desc->nvec_used ? desc->irq + index : 0;
		if (i++ == index)
			return desc->irq;
	}
	return 0;
}

/* request_irq -> irq_startup: reactivate with the real vector, then unmask. */
int kshim_request_irq(struct pci_dev *pdev, unsigned int index)
{
	struct kshim_irq *irq = irq_of(kshim_pci_irq_vector(pdev, index));

	if (!irq)
		return -EINVAL;
	kshim_atomic_enter();
	activate(irq, false);
	irq->requested = true;
	irq->msi_level.chip->irq_unmask(&irq->msi_level);
	kshim_atomic_exit();
	return 0;
}

/* free_irq -> irq_shutdown: mask, then deactivate (a zero message, no driver call). */
void kshim_free_irq(struct pci_dev *pdev, unsigned int index)
{
	struct kshim_irq *irq = irq_of(kshim_pci_irq_vector(pdev, index));
	struct msi_msg zero = { 0 };

	if (!irq || !irq->requested)
		return;
	kshim_atomic_enter();
	irq->msi_level.chip->irq_mask(&irq->msi_level);
	write_msg(irq, &zero);
	irq->cfg.vector = 0;
	irq->requested = false;
	kshim_atomic_exit();
}

/* pci_free_irq_vectors -> msi_domain_free_irqs: msi_free per irq, then the descriptors. */
void kshim_pci_free_irq_vectors(struct pci_dev *pdev)
{
	struct msi_desc *desc;
	unsigned int virqs[64];
	unsigned int n = 0;

	void __iomem *table = NULL;

	/* pci_msix_shutdown: mask every vector, then disable MSI-X. */
	list_for_each_entry(desc, &pdev->dev.msi_list, list) {
		if (desc->kshim_entry && !table)
			table = desc->kshim_entry;
		msix_write_ctrl(desc, true);
		for (unsigned int i = 0; i < desc->nvec_used && n < 64; i++)
			if (desc->irq)
				virqs[n++] = desc->irq + i;
	}
	if (pdev->msix_enabled)
		msix_ctrl(pdev, PCI_MSIX_FLAGS_ENABLE, 0);
	for (unsigned int i = 0; i < n; i++) {
		struct kshim_irq *irq = irq_of(virqs[i]);

		if (!irq)
			continue;
		if (irq->domain->info->ops->msi_free)
			irq->domain->info->ops->msi_free(irq->domain, irq->domain->info, virqs[i]);
		irq->used = false;
	}
	free_descs(pdev);
	if (table)
		iounmap(table);
	pdev->msi_enabled = 0;
	pdev->msix_enabled = 0;
}
