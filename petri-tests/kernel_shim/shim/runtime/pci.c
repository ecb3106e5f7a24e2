/* SPDX-License-Identifier: MIT */
/*
 * The PCI core subset and the test endpoint driver (drivers/pci/probe.c, drivers/pci/remove.c,
 * drivers/pci/bus.c, drivers/pci/setup-bus.c, drivers/pci/slot.c, drivers/pci/search.c,
 * drivers/base/devres.c).
 *
 * Enumeration goes through the driver's own pci_ops, so every config access after the cached
 * identity registers becomes an access to the driver's config window. A rescan only scans:
 * drivers are bound by pci_bus_add_devices alone, as in the kernel.
 */
#include "rt.h"

struct kshim_pci_bus {
	struct pci_bus bus;
	struct list_head link;
	int domain;
	struct irq_domain *msi_domain;
	/* 5.10: the implicit host bridge's windows (spliced from the driver's list). */
	struct list_head windows;
	struct pci_host_bridge *bridge;
};

struct kshim_pci_dev {
	struct pci_dev pdev;
	refcount_t refs;
	bool added;
	bool bound;
	u64 bar_addr[PCI_STD_NUM_BARS];
	u64 bar_size[PCI_STD_NUM_BARS];
	bool bar_64[PCI_STD_NUM_BARS];
	/* The BAR was placed inside a bridge window (a claimed resource). */
	bool bar_assigned[PCI_STD_NUM_BARS];
	u8 msi_cap;
	u8 msix_cap;
	/* Test endpoint state. */
	void __iomem *bar0;
	unsigned int nvec;
	/* 6.1 MSI descriptor lock and iteration cursor (kernel/irq/msi.c). */
	struct mutex msi_mutex;
	struct msi_desc *msi_cursor;
};

struct resource_entry {
	struct list_head node;
	struct resource *res;
};

struct kshim_endpoint_config kshim_endpoint = { .nvec = 2, .msix = true };
static struct list_head root_buses = LIST_HEAD_INIT(root_buses);

static struct kshim_pci_dev *kdev(struct pci_dev *pdev)
{
	return container_of(pdev, struct kshim_pci_dev, pdev);
}

/* ---- resource lists (drivers/pci/bus.c, kernel/resource.c) ---- */
void pci_add_resource(struct list_head *resources, struct resource *res)
{
	struct resource_entry *e;

	KSHIM_CALL("pci_add_resource");
	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e) {
		printk(KERN_ERR "PCI: can't add host bridge window %pR\n", res);
		return;
	}
	e->res = res;
	list_add_tail(&e->node, resources);
}

void pci_free_resource_list(struct list_head *resources)
{
	struct resource_entry *e, *tmp;

	KSHIM_CALL("pci_free_resource_list");
	list_for_each_entry_safe(e, tmp, resources, node) {
		list_del(&e->node);
		kfree(e);
	}
}

/* ---- devres (drivers/base/devres.c): released after remove or a failed probe ---- */
struct devres {
	struct devres *next;
	void (*release)(void *data);
	void *data;
};

static void devres_add(struct device *dev, void (*release)(void *data), void *data)
{
	struct devres *d = kshim_os_alloc(sizeof(*d), 8);

	if (!d)
		kshim_internal_error("out of memory");
	d->release = release;
	d->data = data;
	d->next = dev->kshim;
	dev->kshim = d;
}

void kshim_devres_release_all(struct device *dev)
{
	while (dev->kshim) {
		struct devres *d = dev->kshim;

		dev->kshim = d->next;
		d->release(d->data);
		kshim_os_free(d);
	}
}

static void release_bridge(void *data)
{
	struct pci_host_bridge *bridge = data;

	pci_free_resource_list(&bridge->windows);
	kfree(bridge);
}

/* drivers/pci/probe.c: a host bridge freed with its windows when the device unbinds. */
struct pci_host_bridge *devm_pci_alloc_host_bridge(struct device *dev, size_t priv)
{
	struct pci_host_bridge *bridge;

	KSHIM_CALL("devm_pci_alloc_host_bridge");
	bridge = kzalloc(sizeof(*bridge) + priv, GFP_KERNEL);
	if (!bridge)
		return NULL;
	INIT_LIST_HEAD(&bridge->windows);
	bridge->dev.parent = dev;
	INIT_LIST_HEAD(&bridge->dev.msi_list);
	devres_add(dev, release_bridge, bridge);
	return bridge;
}

/* ---- root buses ---- */
static struct kshim_pci_bus *new_root_bus(struct pci_ops *ops, void *sysdata, int domain)
{
	struct kshim_pci_bus *kb = kzalloc(sizeof(*kb), GFP_KERNEL);

	if (!kb)
		return NULL;
	INIT_LIST_HEAD(&kb->bus.devices);
	INIT_LIST_HEAD(&kb->windows);
	kb->bus.ops = ops;
	kb->bus.sysdata = sysdata;
	kb->bus.number = 0;
	kb->domain = domain;
	list_add_tail(&kb->link, &root_buses);
	return kb;
}

static struct kshim_pci_bus *kbus(const struct pci_bus *bus)
{
	return container_of(bus, struct kshim_pci_bus, bus);
}

/*
 * 5.10 (drivers/pci/probe.c): the windows on `resources` move to the new bus's implicit
 * bridge; the MSI domain is the one registered for sysdata->fwnode
 * (arch/x86/pci/common.c pci_root_bus_fwnode).
 */
struct pci_bus *pci_create_root_bus(struct device *parent, int bus, struct pci_ops *ops,
				    void *sysdata, struct list_head *resources)
{
	struct pci_sysdata *sd = sysdata;
	struct kshim_pci_bus *kb;

	KSHIM_CALL("pci_create_root_bus");
	kb = new_root_bus(ops, sysdata, sd->domain);
	if (!kb)
		return NULL;
	if (resources) {
		while (!list_empty(resources))
			list_move_tail(resources->next, &kb->windows);
	}
	kb->msi_domain = kshim_msi_domain_for_fwnode(sd->fwnode);
	return &kb->bus;
}

/* 6.1: register the bridge, make its bus, take the bridge's MSI domain, scan. */
int pci_scan_root_bus_bridge(struct pci_host_bridge *bridge)
{
	struct kshim_pci_bus *kb;

	KSHIM_CALL("pci_scan_root_bus_bridge");
	kb = new_root_bus(bridge->ops, bridge->sysdata, bridge->domain_nr);
	if (!kb)
		return -ENOMEM;
	kb->bridge = bridge;
	kb->msi_domain = bridge->dev.msi_domain;
	bridge->bus = &kb->bus;
	pci_scan_child_bus(&kb->bus);
	return 0;
}

/*
 * drivers/pci/access.c pci_bus_read_config_*: a failed read yields 0 in 5.10 and all ones
 * (PCI_ERROR_RESPONSE) from 5.17 on.
 */
static int cfg_read(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 *val)
{
	u32 data = KSHIM_KVER >= 517 ? ~0u : 0;
	int ret = bus->ops->read(bus, devfn, where, size, &data);

	if (ret && KSHIM_KVER >= 517)
		data = ~0u;
	*val = data;
	return ret;
}

static void cfg_write(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 val)
{
	bus->ops->write(bus, devfn, where, size, val);
}

int kshim_pci_read(struct pci_dev *pdev, int where, int size, u32 *val)
{
	return cfg_read(pdev->bus, pdev->devfn, where, size, val);
}

void kshim_pci_write(struct pci_dev *pdev, int where, int size, u32 val)
{
	cfg_write(pdev->bus, pdev->devfn, where, size, val);
}

u64 kshim_pci_bar_addr(struct pci_dev *pdev, unsigned int bar)
{
	return bar < PCI_STD_NUM_BARS ? kdev(pdev)->bar_addr[bar] : 0;
}

u8 kshim_pci_msix_cap(struct pci_dev *pdev)
{
	return kdev(pdev)->msix_cap;
}

static struct kshim_pci_dev *find_dev(struct pci_bus *bus, unsigned int devfn)
{
	struct pci_dev *pdev;

	list_for_each_entry(pdev, &bus->devices, bus_list)
		if (pdev->devfn == devfn)
			return kdev(pdev);
	return NULL;
}

/* drivers/pci/probe.c __pci_read_base: size each BAR with decoding off. */
static void size_bars(struct kshim_pci_dev *kd)
{
	struct pci_bus *bus = kd->pdev.bus;
	unsigned int devfn = kd->pdev.devfn;
	u32 cmd;

	cfg_read(bus, devfn, PCI_COMMAND, 2, &cmd);
	cfg_write(bus, devfn, PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
	for (int i = 0; i < PCI_STD_NUM_BARS; i++) {
		int reg = PCI_BASE_ADDRESS_0 + 4 * i;
		u32 l, sz, lh = 0, szh = 0;
		u64 mask;

		cfg_read(bus, devfn, reg, 4, &l);
		cfg_write(bus, devfn, reg, 4, ~0u);
		cfg_read(bus, devfn, reg, 4, &sz);
		cfg_write(bus, devfn, reg, 4, l);
		if (sz == 0 || sz == ~0u || (l & PCI_BASE_ADDRESS_SPACE_IO))
			continue;
		kd->bar_64[i] = (l & PCI_BASE_ADDRESS_MEM_TYPE_64) != 0;
		if (kd->bar_64[i] && i + 1 < PCI_STD_NUM_BARS) {
			cfg_read(bus, devfn, reg + 4, 4, &lh);
			cfg_write(bus, devfn, reg + 4, 4, ~0u);
			cfg_read(bus, devfn, reg + 4, 4, &szh);
			cfg_write(bus, devfn, reg + 4, 4, lh);
		} else {
			szh = kd->bar_64[i] ? 0 : ~0u;
		}
		mask = ((u64)szh << 32 | sz) & ~0xfULL;
		kd->bar_size[i] = mask ? (~mask + 1) : 0;
		kd->bar_addr[i] = ((u64)lh << 32 | l) & ~0xfULL;
		if (kd->bar_64[i])
			i++;
	}
	cfg_write(bus, devfn, PCI_COMMAND, 2, cmd);
}

/* drivers/pci/probe.c pci_find_capability on a freshly scanned device. */
static void find_caps(struct kshim_pci_dev *kd)
{
	struct pci_bus *bus = kd->pdev.bus;
	u32 status, pos;

	cfg_read(bus, kd->pdev.devfn, PCI_STATUS, 2, &status);
	if (!(status & 0x10) || status == 0xffff)
		return;
	cfg_read(bus, kd->pdev.devfn, PCI_CAPABILITY_LIST, 1, &pos);
	for (int ttl = 48; ttl && pos >= 0x40 && pos < 0x100; ttl--) {
		u32 id, next;

		pos &= ~3u;
		cfg_read(bus, kd->pdev.devfn, pos, 1, &id);
		cfg_read(bus, kd->pdev.devfn, pos + 1, 1, &next);
		if (id == PCI_CAP_ID_MSI && !kd->msi_cap)
			kd->msi_cap = pos;
		if (id == PCI_CAP_ID_MSIX && !kd->msix_cap)
			kd->msix_cap = pos;
		pos = next;
	}
}

static struct kshim_pci_dev *scan_device(struct pci_bus *bus, unsigned int devfn)
{
	struct kshim_pci_bus *kb = kbus(bus);
	struct kshim_pci_dev *kd;
	u32 id;

	if (cfg_read(bus, devfn, PCI_VENDOR_ID, 4, &id) != PCIBIOS_SUCCESSFUL)
		return NULL;
	if (id == ~0u || id == 0 || (id & 0xffff) == 0xffff || (id & 0xffff) == 0)
		return NULL;
	kd = kzalloc(sizeof(*kd), GFP_KERNEL);
	if (!kd)
		return NULL;
	kd->pdev.bus = bus;
	kd->pdev.devfn = devfn;
	kd->pdev.vendor = id & 0xffff;
	kd->pdev.device = id >> 16;
	kd->pdev.dev.parent = kb->bridge ? &kb->bridge->dev : NULL;
	kd->pdev.dev.msi_domain = kb->msi_domain;
	INIT_LIST_HEAD(&kd->pdev.dev.msi_list);
	kd->pdev.kshim = kd;
	refcount_set(&kd->refs, 1);
	__mutex_init(&kd->msi_mutex, "msi_lock", NULL);
	/*
	 * pci_scan_device/pci_setup_device read the BARs and capabilities first; only then does
	 * pci_device_add link the device where pci_get_domain_bus_and_slot finds it.
	 */
	size_bars(kd);
	find_caps(kd);
	list_add_tail(&kd->pdev.bus_list, &bus->devices);
	kshim_event(EV_NOTE, "pci %04x:00:%02x.%d [%04x:%04x] found", kb->domain,
		    PCI_SLOT(devfn), PCI_FUNC(devfn), kd->pdev.vendor, kd->pdev.device);
	return kd;
}

/* Scans every slot's function 0, and functions 1-7 of multi-function devices. */
unsigned int pci_scan_child_bus(struct pci_bus *bus)
{
	KSHIM_CALL("pci_scan_child_bus");
	for (unsigned int slot = 0; slot < 32; slot++) {
		u32 hdr = 0;

		for (unsigned int fn = 0; fn < 8; fn++) {
			unsigned int devfn = PCI_DEVFN(slot, fn);
			struct kshim_pci_dev *kd = find_dev(bus, devfn);

			if (!kd)
				kd = scan_device(bus, devfn);
			if (!kd) {
				if (fn == 0)
					break;
				continue;
			}
			if (fn == 0) {
				cfg_read(bus, devfn, PCI_HEADER_TYPE, 1, &hdr);
				if (hdr == 0xff || !(hdr & 0x80))
					break;
			}
		}
	}
	return 0;
}

/*
 * drivers/pci/setup-bus.c: place every memory BAR inside a bridge window (largest first,
 * naturally aligned) and program it through the driver's config accessors.
 */
void pci_bus_assign_resources(const struct pci_bus *cbus)
{
	struct pci_bus *bus = (struct pci_bus *)cbus;
	struct kshim_pci_bus *kb = kbus(bus);
	struct list_head *windows = kb->bridge ? &kb->bridge->windows : &kb->windows;
	struct resource_entry *e;
	u64 next[2] = { 0, 0 }, end[2] = { 0, 0 };
	struct pci_dev *pdev;

	KSHIM_CALL("pci_bus_assign_resources");
	list_for_each_entry(e, windows, node) {
		int high = e->res->start >= 0x100000000ULL;

		next[high] = e->res->start;
		end[high] = e->res->end;
	}
	for (int pass = 0; pass < 64; pass++) {
		u64 want = 1ULL << (63 - pass);

		list_for_each_entry(pdev, &bus->devices, bus_list) {
			struct kshim_pci_dev *kd = kdev(pdev);

			for (int i = 0; i < PCI_STD_NUM_BARS; i++) {
				u64 size = kd->bar_size[i];
				int high = kd->bar_64[i];
				u64 at;

				if (size != want)
					continue;
				at = (next[high] + size - 1) & ~(size - 1);
				if (!next[high] || at + size - 1 > end[high]) {
					kshim_event(EV_NOTE, "BAR %d of %02x.%d does not fit a window",
						    i, PCI_SLOT(pdev->devfn), PCI_FUNC(pdev->devfn));
					continue;
				}
				kd->bar_addr[i] = at;
				kd->bar_assigned[i] = true;
				next[high] = at + size;
				cfg_write(bus, pdev->devfn, PCI_BASE_ADDRESS_0 + 4 * i, 4,
					  (u32)at);
				if (high && i + 1 < PCI_STD_NUM_BARS)
					cfg_write(bus, pdev->devfn, PCI_BASE_ADDRESS_0 + 4 * (i + 1),
						  4, (u32)(at >> 32));
			}
		}
	}
}

/* ---- the test endpoint driver: MSI/MSI-X in probe, a BAR read in remove ---- */
/* Binds the test driver; false if its probe failed (the device stays without a driver). */
static bool endpoint_probe(struct kshim_pci_dev *kd)
{
	struct pci_dev *pdev = &kd->pdev;
	u32 cmd;
	int n;

	/* pci_enable_device -> pci_enable_resources: every BAR must have been assigned. */
	for (int i = 0; i < PCI_STD_NUM_BARS; i++) {
		if (kd->bar_size[i] && !kd->bar_assigned[i]) {
			kshim_event(EV_NOTE,
				    "endpoint %02x.%d: can't enable device: BAR %d not assigned (domain %04x)",
				    PCI_SLOT(pdev->devfn), PCI_FUNC(pdev->devfn), i,
				    kbus(pdev->bus)->domain);
			return false;
		}
	}
	/* The domain names the bus when one process runs several. */
	kshim_event(EV_NOTE, "endpoint probe %02x.%d (domain %04x)", PCI_SLOT(pdev->devfn),
		    PCI_FUNC(pdev->devfn), kbus(pdev->bus)->domain);
	cfg_read(pdev->bus, pdev->devfn, PCI_COMMAND, 2, &cmd);
	cfg_write(pdev->bus, pdev->devfn, PCI_COMMAND, 2,
		  cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	if (kd->bar_size[0])
		kd->bar0 = ioremap(kd->bar_addr[0], kd->bar_size[0]);
	n = kshim_pci_alloc_irq_vectors(pdev, kshim_endpoint.nvec, kshim_endpoint.msix);
	if (n < 0) {
		kshim_event(EV_NOTE, "endpoint: no interrupt vectors (%d)", n);
		return true;
	}
	kd->nvec = n;
	for (int i = 0; i < n; i++)
		kshim_request_irq(pdev, i);
	return true;
}

static void endpoint_remove(struct kshim_pci_dev *kd)
{
	struct pci_dev *pdev = &kd->pdev;
	u32 cmd;

	kshim_event(EV_NOTE, "endpoint remove %02x.%d", PCI_SLOT(pdev->devfn),
		    PCI_FUNC(pdev->devfn));
	/* As nvme_remove reads CSTS: a register read of a device that may be gone. */
	if (kd->bar0 && kd->bar_size[0] >= 0x20)
		readl((char __iomem *)kd->bar0 + 0x1c);
	for (unsigned int i = 0; i < kd->nvec; i++)
		kshim_free_irq(pdev, i);
	if (kd->nvec)
		kshim_pci_free_irq_vectors(pdev);
	kd->nvec = 0;
	if (kd->bar0)
		iounmap(kd->bar0);
	kd->bar0 = NULL;
	cfg_read(pdev->bus, pdev->devfn, PCI_COMMAND, 2, &cmd);
	cfg_write(pdev->bus, pdev->devfn, PCI_COMMAND, 2,
		  cmd & ~(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER));
}

/* drivers/pci/bus.c: make devices visible and bind drivers (synchronously). */
void pci_bus_add_devices(const struct pci_bus *cbus)
{
	struct pci_dev *pdev;

	KSHIM_CALL("pci_bus_add_devices");
	list_for_each_entry(pdev, &cbus->devices, bus_list) {
		struct kshim_pci_dev *kd = kdev(pdev);

		if (kd->added)
			continue;
		kd->added = true;
		kd->bound = endpoint_probe(kd);
	}
}

static void stop_dev(struct kshim_pci_dev *kd)
{
	if (kd->bound) {
		kd->bound = false;
		endpoint_remove(kd);
	}
	kd->added = false;
}

void pci_dev_put(struct pci_dev *pdev)
{
	struct kshim_pci_dev *kd;

	KSHIM_CALL("pci_dev_put");
	if (!pdev)
		return;
	kd = kdev(pdev);
	if (refcount_dec_and_test(&kd->refs))
		kfree(kd);
}

static void remove_dev(struct kshim_pci_dev *kd)
{
	list_del(&kd->pdev.bus_list);
	pci_dev_put(&kd->pdev);
}

/* drivers/pci/search.c: find a device and take a reference. */
struct pci_dev *pci_get_domain_bus_and_slot(int domain, unsigned int bus, unsigned int devfn)
{
	struct kshim_pci_bus *kb;

	KSHIM_CALL("pci_get_domain_bus_and_slot");
	list_for_each_entry(kb, &root_buses, link) {
		struct kshim_pci_dev *kd;

		if (kb->domain != domain || kb->bus.number != bus)
			continue;
		kd = find_dev(&kb->bus, devfn);
		if (kd) {
			refcount_inc(&kd->refs);
			return &kd->pdev;
		}
	}
	return NULL;
}

/* drivers/pci/remove.c: unbind (irqs freed by the endpoint), unlink, drop the bus's ref. */
void pci_stop_and_remove_bus_device(struct pci_dev *pdev)
{
	KSHIM_CALL("pci_stop_and_remove_bus_device");
	stop_dev(kdev(pdev));
	remove_dev(kdev(pdev));
}

void pci_stop_root_bus(struct pci_bus *bus)
{
	struct pci_dev *pdev;

	KSHIM_CALL("pci_stop_root_bus");
	list_for_each_entry(pdev, &bus->devices, bus_list)
		stop_dev(kdev(pdev));
}

void pci_remove_root_bus(struct pci_bus *bus)
{
	struct kshim_pci_bus *kb = kbus(bus);
	struct pci_dev *pdev, *tmp;

	KSHIM_CALL("pci_remove_root_bus");
	list_for_each_entry_safe(pdev, tmp, &bus->devices, bus_list)
		remove_dev(kdev(pdev));
	list_del(&kb->link);
	pci_free_resource_list(&kb->windows);
	if (kb->bridge)
		kb->bridge->bus = NULL;
	kfree(kb);
}

void pci_walk_bus(struct pci_bus *top, int (*cb)(struct pci_dev *, void *), void *userdata)
{
	struct pci_dev *pdev;

	KSHIM_CALL("pci_walk_bus");
	list_for_each_entry(pdev, &top->devices, bus_list)
		if (cb(pdev, userdata))
			break;
}

/* drivers/pci/slot.c: a named slot object. */
struct pci_slot {
	struct pci_bus *bus;
	int number;
	char name[16];
};

struct pci_slot *pci_create_slot(struct pci_bus *parent, int slot_nr, const char *name,
				 struct hotplug_slot *hotplug)
{
	struct pci_slot *slot;

	KSHIM_CALL("pci_create_slot");
	slot = kzalloc(sizeof(*slot), GFP_KERNEL);
	if (!slot)
		return ERR_PTR(-ENOMEM);
	slot->bus = parent;
	slot->number = slot_nr;
	snprintf(slot->name, sizeof(slot->name), "%s", name);
	kshim_event(EV_NOTE, "slot %s created (nr %d)", slot->name, slot_nr);
	return slot;
}

void pci_destroy_slot(struct pci_slot *slot)
{
	KSHIM_CALL("pci_destroy_slot");
	kshim_event(EV_NOTE, "slot %s destroyed", slot->name);
	kfree(slot);
}

/* ---- 6.1 MSI descriptor walking (kernel/irq/msi.c) ---- */
static struct kshim_pci_dev *kdev_of_dev(struct device *dev)
{
	return kdev(container_of(dev, struct pci_dev, dev));
}

void msi_lock_descs(struct device *dev)
{
	mutex_lock(&kdev_of_dev(dev)->msi_mutex);
}

void msi_unlock_descs(struct device *dev)
{
	kdev_of_dev(dev)->msi_cursor = NULL;
	mutex_unlock(&kdev_of_dev(dev)->msi_mutex);
}

static bool msi_filter(struct msi_desc *d, enum msi_desc_filter filter)
{
	switch (filter) {
	case MSI_DESC_ALL:
		return true;
	case MSI_DESC_NOTASSOCIATED:
		return !d->irq;
	case MSI_DESC_ASSOCIATED:
		return !!d->irq;
	}
	return false;
}

static struct msi_desc *msi_from(struct device *dev, struct list_head *pos,
				 enum msi_desc_filter filter)
{
	for (; pos != &dev->msi_list; pos = pos->next) {
		struct msi_desc *d = list_entry(pos, struct msi_desc, list);

		if (msi_filter(d, filter))
			return d;
	}
	return NULL;
}

struct msi_desc *msi_first_desc(struct device *dev, enum msi_desc_filter filter)
{
	struct kshim_pci_dev *kd = kdev_of_dev(dev);

	kd->msi_cursor = msi_from(dev, dev->msi_list.next, filter);
	return kd->msi_cursor;
}

struct msi_desc *msi_next_desc(struct device *dev, enum msi_desc_filter filter)
{
	struct kshim_pci_dev *kd = kdev_of_dev(dev);

	if (!kd->msi_cursor)
		return NULL;
	kd->msi_cursor = msi_from(dev, kd->msi_cursor->list.next, filter);
	return kd->msi_cursor;
}

/* ---- NUMA: one node ---- */
int num_possible_nodes(void)
{
	return 1;
}

int numa_map_to_online_node(int node)
{
	return 0;
}
