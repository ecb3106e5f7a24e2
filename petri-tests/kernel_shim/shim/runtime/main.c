/* SPDX-License-Identifier: MIT */
/*
 * The guest process: context 0 ("process") runs the controller's commands (init_module, probe,
 * remove, suspend, resume, exit) the way the driver core would call the driver; the other
 * contexts (channel tasklets, workqueue workers) start as the driver creates them.
 */
#include "rt.h"

int init_module(void);
int main(void);
void cleanup_module(void);

#ifndef KSHIM_DEBIAN_VERSION
#define KSHIM_DEBIAN_VERSION "unknown"
#endif

struct command {
	u32 cmd;
	u32 bus;
	u8 arg[64];
	u32 len;
};

#define QUEUE 16
static struct command queue[QUEUE];
static unsigned int q_head, q_tail;

struct bus_slot {
	struct hv_device hdev;
	bool exists;
	bool bound;
	/* The driver's probe or remove is running (the device lock is held). */
	bool busy;
};
static struct bus_slot buses[KSHIM_MAX_BUS];

void kshim_command_push(u32 cmd, u32 bus, const u8 *arg, u32 len)
{
	struct command *c;

	if (q_tail - q_head >= QUEUE)
		kshim_protocol_error("too many queued commands");
	c = &queue[q_tail++ % QUEUE];
	c->cmd = cmd;
	c->bus = bus;
	c->len = len > sizeof(c->arg) ? sizeof(c->arg) : len;
	memcpy(c->arg, arg, c->len);
}

void kshim_apply_controller_frame(const struct kshim_frame *f)
{
	switch (f->type) {
	case C_PACKET:
		if (f->len < 16)
			kshim_protocol_error("C_PACKET too short");
		kshim_vmbus_deliver(kshim_get_u32(f, 0), kshim_get_u16(f, 4), kshim_get_u16(f, 6),
				    kshim_get_u64(f, 8), f->data + 16, f->len - 16);
		break;
	case C_RESCIND:
		kshim_vmbus_rescind(kshim_get_u32(f, 0));
		break;
	case C_ADVANCE: {
		u64 t = kshim_get_u64(f, 0);

		if (t > kshim_now_ns)
			kshim_now_ns = t;
		break;
	}
	case C_COMMAND:
		if (f->len < 8)
			kshim_protocol_error("C_COMMAND too short");
		kshim_command_push(kshim_get_u32(f, 0), kshim_get_u32(f, 4), f->data + 8,
				   f->len - 8);
		break;
	default:
		kshim_protocol_error("unexpected frame at a scheduling point");
	}
}

static bool have_command(void *arg)
{
	return q_head != q_tail;
}

static struct bus_slot *bus_slot(u32 bus)
{
	if (bus >= KSHIM_MAX_BUS)
		kshim_protocol_error("bus index out of range");
	return &buses[bus];
}

static bool slot_idle(void *arg)
{
	return !((struct bus_slot *)arg)->busy;
}

/*
 * The driver core holds the device lock around probe and remove: a rescind's unregister
 * waits for a running probe (vmbus_onoffer_rescind's probe_done loop), a remove command for a
 * remove the rescind started.
 */
static void device_lock_slot(struct bus_slot *s)
{
	kshim_block(SP_MUTEX_LOCK, slot_idle, s, 0, false);
	s->busy = true;
}

/* drivers/hv/vmbus_drv.c vmbus_probe: match, then call the driver's probe. */
static int do_probe(u32 bus, const struct command *c)
{
	struct hv_driver *drv = kshim_registered_driver();
	struct bus_slot *s = bus_slot(bus);
	int ret;

	if (!drv)
		return -ENODEV;
	if (s->bound)
		return -EBUSY;
	if (!s->exists) {
		memset(&s->hdev, 0, sizeof(s->hdev));
		s->hdev.dev_type = drv->id_table[0].guid;
		INIT_LIST_HEAD(&s->hdev.device.msi_list);
		s->hdev.channel = kshim_channel_create(bus);
		s->exists = true;
	}
	if (c->len >= 16)
		memcpy(s->hdev.dev_instance.b, c->arg, 16);
	device_lock_slot(s);
	ret = drv->probe(&s->hdev, &drv->id_table[0]);
	s->busy = false;
	if (ret)
		kshim_devres_release_all(&s->hdev.device);
	else
		s->bound = true;
	return ret;
}

/*
 * device_release_driver: the driver's remove, then its devres (under the device lock). A
 * remove the rescind runs first reports the driver's work still queued or running, by
 * function address and where main is loaded, so the controller can name the functions.
 */
static int do_remove(u32 bus, bool from_rescind)
{
	struct hv_driver *drv = kshim_registered_driver();
	struct bus_slot *s = bus_slot(bus);
	int ret;

	device_lock_slot(s);
	if (!drv || !s->bound) {
		s->busy = false;
		return -ENODEV;
	}
	if (from_rescind) {
		char work[256];

		kshim_work_describe(work, sizeof(work));
		kshim_event(EV_NOTE, "hv_pci_remove from vmbus_onoffer_rescind bus %u: main=%#llx%s",
			    bus, (unsigned long long)(uintptr_t)&main, work);
	}
	KSHIM_CALL("hv_pci_remove");
#if KSHIM_KVER >= 603
	drv->remove(&s->hdev);
	ret = 0;
#else
	ret = drv->remove(&s->hdev);
#endif
	s->bound = false;
	kshim_devres_release_all(&s->hdev.device);
	s->busy = false;
	return ret;
}

void kshim_device_unregister(u32 bus)
{
	KSHIM_CALL("vmbus_device_unregister");
	do_remove(bus, true);
}

static int run_command(const struct command *c)
{
	struct hv_driver *drv = kshim_registered_driver();

	switch (c->cmd) {
	case CMD_INIT:
		return init_module();
	case CMD_PROBE:
		return do_probe(c->bus, c);
	case CMD_REMOVE:
		return do_remove(c->bus, false);
	case CMD_SUSPEND:
		if (!drv || !bus_slot(c->bus)->bound)
			return -ENODEV;
		return drv->suspend(&bus_slot(c->bus)->hdev);
	case CMD_RESUME:
		if (!drv || !bus_slot(c->bus)->bound)
			return -ENODEV;
		return drv->resume(&bus_slot(c->bus)->hdev);
	case CMD_ENDPOINT:
		if (c->len < 8)
			return -EINVAL;
		kshim_endpoint.nvec = c->arg[0] | c->arg[1] << 8 | c->arg[2] << 16 |
				      (u32)c->arg[3] << 24;
		kshim_endpoint.msix = c->arg[4] != 0;
		return 0;
	case CMD_FAIL_ALLOC:
		if (c->len < 4)
			return -EINVAL;
		kshim_fail_alloc(c->arg[0] | c->arg[1] << 8 | c->arg[2] << 16 |
				 (u32)c->arg[3] << 24);
		return 0;
	case CMD_HV_HINTS:
		if (c->len < 4)
			return -EINVAL;
		ms_hyperv.hints = c->arg[0] | c->arg[1] << 8 | c->arg[2] << 16 |
				  (u32)c->arg[3] << 24;
		return 0;
	case CMD_EXIT: {
		struct kshim_wbuf w;

		/* driver_unregister unbinds every bound device first. */
		for (u32 b = 0; b < KSHIM_MAX_BUS; b++)
			if (buses[b].bound)
				do_remove(b, false);
		cleanup_module();
		kshim_wbuf_init(&w);
		kshim_put_u32(&w, kshim_leak_report());
		kshim_send_frame(G_DONE, &w);
		kshim_os_exit(0);
	}
	default:
		return -EINVAL;
	}
}

int main(void)
{
	struct kshim_wbuf w;

	kshim_os_init();
	kshim_wbuf_init(&w);
	kshim_put_u32(&w, KSHIM_KVER);
	kshim_put_str(&w, KSHIM_DEBIAN_VERSION);
	kshim_send_frame(G_HELLO, &w);
	kshim_sched_init();
	kshim_mmio_init();
	kshim_hv_init();
	kshim_sched(SP_START);
	for (;;) {
		struct command c;
		int ret;

		KSHIM_CALL("command wait");
		kshim_block(SP_IDLE, have_command, NULL, 0, false);
		c = queue[q_head++ % QUEUE];
		ret = run_command(&c);
		kshim_wbuf_init(&w);
		kshim_put_u32(&w, c.cmd);
		kshim_put_u32(&w, (u32)ret);
		kshim_send_frame(G_RESULT, &w);
	}
}
