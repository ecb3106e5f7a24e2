/* SPDX-License-Identifier: MIT */
/*
 * Internal declarations shared by the runtime's kernel-side files (compiled -nostdinc against
 * the shim, like the driver).
 */
#ifndef KSHIM_RT_H
#define KSHIM_RT_H

#include <linux/kernel.h>
#include <linux/pci.h>
#include <linux/hyperv.h>
#include <linux/delay.h>
#include <linux/msi.h>

#include "kshim_os.h"
#include "proto.h"

#define KSHIM_MAX_CTX 64
#define KSHIM_MAX_BUS 8

/* ---- frames (proto.c) ---- */
struct kshim_frame {
	u32 type;
	u32 len;
	u8 *data; /* owned; kshim_frame_free */
};
struct kshim_wbuf {
	u8 buf[4096 + 256];
	u32 len;
};
void kshim_wbuf_init(struct kshim_wbuf *w);
void kshim_put_u16(struct kshim_wbuf *w, u16 v);
void kshim_put_u32(struct kshim_wbuf *w, u32 v);
void kshim_put_u64(struct kshim_wbuf *w, u64 v);
void kshim_put_bytes(struct kshim_wbuf *w, const void *p, u32 n);
void kshim_put_str(struct kshim_wbuf *w, const char *s);
void kshim_send_frame(u32 type, const struct kshim_wbuf *w);
void kshim_recv_frame(struct kshim_frame *f);
void kshim_frame_free(struct kshim_frame *f);
u16 kshim_get_u16(const struct kshim_frame *f, u32 off);
u32 kshim_get_u32(const struct kshim_frame *f, u32 off);
u64 kshim_get_u64(const struct kshim_frame *f, u32 off);
__attribute__((noreturn)) void kshim_protocol_error(const char *what);
__attribute__((noreturn)) void kshim_internal_error(const char *what);
/* A G_MMIO_READ or G_HYPERCALL: sends the frame, returns the C_VALUE. */
u64 kshim_call_value(u32 type, const struct kshim_wbuf *w);

/* ---- contexts and scheduling (sched.c) ---- */
typedef bool (*kshim_ready_fn)(void *arg);
struct kshim_ctx {
	int id;
	int kind;
	char name[32];
	bool exists;
	bool finished;
	/* What the context waits for; NULL = runnable. */
	kshim_ready_fn ready;
	void *ready_arg;
	/* Absolute virtual deadline of a timed wait, 0 = none. */
	u64 deadline_ns;
	/* Spinlocks held plus atomic sections entered (irq descriptor lock, tasklet). */
	int atomic;
	/* Between local_irq_save and the restore that turns interrupts back on. */
	bool irqs_off;
};
extern volatile int kshim_current;
extern const char *volatile kshim_last_call;
extern u64 kshim_now_ns;
void kshim_sched_init(void);
struct kshim_ctx *kshim_ctx(int id);
struct kshim_ctx *kshim_self(void);
/* Creates a context on its own thread; it runs fn(arg) once first chosen. */
int kshim_ctx_create(int kind, const char *name, void (*fn)(void *arg), void *arg);
/* A scheduling point: the controller chooses who runs next (possibly the caller). */
void kshim_sched(int point);
/*
 * Blocks the caller until ready(arg) holds or the virtual deadline passes (0 = no deadline);
 * returns true if ready. Sleeping in atomic context is reported as a BUG first unless
 * spinning is true (a spin wait, allowed in atomic context).
 */
bool kshim_block(int point, kshim_ready_fn ready, void *arg, u64 deadline_ns, bool spinning);
/* Marks the caller finished and gives the baton away forever. */
__attribute__((noreturn)) void kshim_ctx_exit(void);
void kshim_event(u32 kind, const char *fmt, ...) __printf(2, 3);
void kshim_atomic_enter(void);
void kshim_atomic_exit(void);
#define KSHIM_CALL(name) (kshim_last_call = (name))
#define NS_PER_JIFFY (1000000000ULL / HZ)

/* ---- controller events (main.c, vmbus.c) ---- */
/* Applies a world-changing controller frame (packet, rescind, advance, command). */
void kshim_apply_controller_frame(const struct kshim_frame *f);
void kshim_vmbus_deliver(u32 bus, u16 type, u16 flags, u64 trans_id, const u8 *payload,
			 u32 len);
void kshim_vmbus_rescind(u32 bus);
struct vmbus_channel *kshim_channel_create(u32 bus);
void kshim_channel_destroy(struct vmbus_channel *ch);
u32 kshim_channel_bus(struct vmbus_channel *ch);
struct hv_driver *kshim_registered_driver(void);
void kshim_command_push(u32 cmd, u32 bus, const u8 *arg, u32 len);
/*
 * vmbus_onoffer_rescind's tail (main.c): waits for the device's probe to finish, then
 * vmbus_device_unregister: the driver's remove if it is bound.
 */
void kshim_device_unregister(u32 bus);

/*
 * Every live workqueue's running and queued work items, as " running=ADDR" and
 * " queued=ADDR" by function address (sync.c); empty when no work is pending.
 */
void kshim_work_describe(char *buf, size_t size);

/* ---- memory (mem.c) ---- */
u32 kshim_leak_report(void);
/* Makes the n-th allocation from now fail (0: none), as fault injection. */
void kshim_fail_alloc(u32 n);
int kshim_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- MMIO (vmbus.c) ---- */
void kshim_mmio_init(void);
/* ms_hyperv and the per-CPU hypercall input pages (vmbus.c). */
void kshim_hv_init(void);
void kshim_devres_release_all(struct device *dev);

/* ---- PCI core and test endpoint (pci.c) ---- */
struct kshim_endpoint_config {
	u32 nvec;
	bool msix;
};
extern struct kshim_endpoint_config kshim_endpoint;

/* Config access through the bus's ops, as drivers/pci/access.c does (pci.c). */
int kshim_pci_read(struct pci_dev *pdev, int where, int size, u32 *val);
void kshim_pci_write(struct pci_dev *pdev, int where, int size, u32 val);
/* The address a BAR was assigned (0 if none), and where the MSI-X capability is (0: none). */
u64 kshim_pci_bar_addr(struct pci_dev *pdev, unsigned int bar);
u8 kshim_pci_msix_cap(struct pci_dev *pdev);

/* ---- MSI core (msi.c) ---- */
int kshim_pci_alloc_irq_vectors(struct pci_dev *pdev, unsigned int nvec, bool msix);
void kshim_pci_free_irq_vectors(struct pci_dev *pdev);
int kshim_request_irq(struct pci_dev *pdev, unsigned int index);
void kshim_free_irq(struct pci_dev *pdev, unsigned int index);
unsigned int kshim_pci_irq_vector(struct pci_dev *pdev, unsigned int index);
struct irq_domain *kshim_msi_domain_for_fwnode(struct fwnode_handle *fwnode);

#endif /* KSHIM_RT_H */
