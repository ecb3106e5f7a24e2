/* SPDX-License-Identifier: MIT */
/*
 * kshim pci: config-space constants, pci_dev/pci_bus/host bridge, and the PCI core calls the
 * driver makes (include/uapi/linux/pci_regs.h, include/linux/pci.h, drivers/pci/probe.c,
 * drivers/pci/remove.c, drivers/pci/bus.c, drivers/pci/slot.c, arch/x86/include/asm/pci.h).
 */
#ifndef KSHIM_PCI_H
#define KSHIM_PCI_H

#include <kshim/core.h>
#include <kshim/device.h>
#include <kshim/irq.h>

/* ---- config space (PCI Local Bus spec; include/uapi/linux/pci_regs.h) ---- */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS 0x06
#define PCI_CLASS_REVISION 0x08
#define PCI_CACHE_LINE_SIZE 0x0c
#define PCI_HEADER_TYPE 0x0e
#define PCI_BASE_ADDRESS_0 0x10
#define PCI_BASE_ADDRESS_SPACE_IO 0x01
#define PCI_BASE_ADDRESS_MEM_TYPE_64 0x04
#define PCI_BASE_ADDRESS_MEM_MASK (~0x0fUL)
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_ROM_ADDRESS 0x30
#define PCI_CAPABILITY_LIST 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d
#define PCI_MIN_GNT 0x3e
#define PCI_STD_NUM_BARS 6
#define PCI_CAP_ID_MSI 0x05
#define PCI_CAP_ID_MSIX 0x11
#define PCI_SLOT(devfn) (((devfn) >> 3) & 0x1f)
#define PCI_FUNC(devfn) ((devfn) & 0x07)
#define PCI_DEVFN(slot, func) ((((slot) & 0x1f) << 3) | ((func) & 0x07))
/* include/linux/pci.h: the value a read of a missing device returns. */
#define PCI_ERROR_RESPONSE (~0ULL)

/* Return values of the config accessors (include/linux/pci.h). */
#define PCIBIOS_SUCCESSFUL 0x00
#define PCIBIOS_DEVICE_NOT_FOUND 0x86

struct pci_bus;
struct pci_slot;
struct hotplug_slot;

struct pci_ops {
	int (*read)(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 *val);
	int (*write)(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 val);
};

/* Only the fields the driver touches, plus the runtime's own state. */
struct pci_dev {
	struct list_head bus_list;
	struct pci_bus *bus;
	unsigned int devfn;
	unsigned short vendor;
	unsigned short device;
	struct device dev;
	unsigned int msi_enabled : 1;
	unsigned int msix_enabled : 1;
	void *kshim;
};

struct pci_bus {
	struct list_head devices;
	void *sysdata;
	struct pci_ops *ops;
	unsigned char number;
	/* 5.10: the legacy MSI controller the driver installs. */
	struct msi_controller *msi;
	void *kshim;
};

/* arch/x86/include/asm/pci.h */
struct pci_sysdata {
	int domain;
	int node;
	void *fwnode;
};

/* 6.1: include/linux/pci.h */
struct pci_host_bridge {
	struct device dev;
	struct pci_bus *bus;
	struct pci_ops *ops;
	void *sysdata;
	int busnr;
	int domain_nr;
	struct list_head windows;
	void *kshim;
};

/* ---- PCI core calls ---- */
struct pci_bus *pci_create_root_bus(struct device *parent, int bus, struct pci_ops *ops,
				    void *sysdata, struct list_head *resources);
struct pci_host_bridge *devm_pci_alloc_host_bridge(struct device *dev, size_t priv);
int pci_scan_root_bus_bridge(struct pci_host_bridge *bridge);
unsigned int pci_scan_child_bus(struct pci_bus *bus);
void pci_bus_assign_resources(const struct pci_bus *bus);
void pci_bus_add_devices(const struct pci_bus *bus);
void pci_lock_rescan_remove(void);
void pci_unlock_rescan_remove(void);
struct pci_dev *pci_get_domain_bus_and_slot(int domain, unsigned int bus, unsigned int devfn);
void pci_dev_put(struct pci_dev *dev);
void pci_stop_and_remove_bus_device(struct pci_dev *dev);
void pci_stop_root_bus(struct pci_bus *bus);
void pci_remove_root_bus(struct pci_bus *bus);
void pci_add_resource(struct list_head *resources, struct resource *res);
void pci_free_resource_list(struct list_head *resources);
void pci_walk_bus(struct pci_bus *top, int (*cb)(struct pci_dev *, void *), void *userdata);
struct pci_slot *pci_create_slot(struct pci_bus *parent, int slot_nr, const char *name,
				 struct hotplug_slot *hotplug);
void pci_destroy_slot(struct pci_slot *slot);

/* include/linux/hyperv.h: the config-block back channel other drivers use. */
struct hyperv_pci_block_ops {
	int (*read_block)(struct pci_dev *dev, void *buf, unsigned int buf_len,
			  unsigned int block_id, unsigned int *bytes_returned);
	int (*write_block)(struct pci_dev *dev, void *buf, unsigned int len,
			   unsigned int block_id);
	int (*reg_blk_invalidate)(struct pci_dev *dev, void *context,
				  void (*block_invalidate)(void *context, u64 block_mask));
};
extern struct hyperv_pci_block_ops hvpci_block_ops;

#endif /* KSHIM_PCI_H */
