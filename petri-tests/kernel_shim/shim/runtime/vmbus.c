/* SPDX-License-Identifier: MIT */
/*
 * VMBus channels, the 6.1 requestor, MMIO space and mappings, the Hyper-V arch calls and
 * driver registration (drivers/hv/channel.c, drivers/hv/channel_mgmt.c, drivers/hv/vmbus_drv.c,
 * drivers/hv/ring_buffer.c, arch/x86/hyperv/hv_init.c, include/asm-generic/mshyperv.h).
 *
 * Host-to-guest packets come from the controller (C_PACKET) into a per-channel queue; the
 * channel's tasklet context runs the registered callback while packets are pending and the
 * tasklet is enabled. Guest-to-host packets go straight to the controller (G_SEND).
 */
#include "rt.h"

struct kshim_packet {
	struct kshim_packet *next;
	u32 len; /* descriptor + payload + padding, a multiple of 8 */
	u64 trans_id;
	u8 data[];
};

struct kshim_channel {
	struct vmbus_channel ch;
	u32 bus;
	bool open;
	/* vmbus_close ran and no vmbus_open since: the ring is gone. */
	bool closed;
	/* Read by tasklet_disable through callback_event.kshim. */
	bool tasklet_running;
	int tasklet_ctx;
	/* The context running vmbus_onoffer_rescind, -1 before the rescind. */
	int rescind_ctx;
	struct kshim_packet *head;
	struct kshim_packet **tail;
};

static struct kshim_channel *channels[KSHIM_MAX_BUS];

static struct kshim_channel *kc_of(struct vmbus_channel *ch)
{
	return container_of(ch, struct kshim_channel, ch);
}

u32 kshim_channel_bus(struct vmbus_channel *ch)
{
	return kc_of(ch)->bus;
}

/* The channel's tasklet: runs the callback while packets are pending and it is enabled. */
static bool tasklet_ready(void *arg)
{
	struct kshim_channel *kc = arg;

	return kc->open && kc->head && kc->ch.onchannel_callback &&
	       kc->ch.callback_event.disable_count == 0;
}

static void tasklet_main(void *arg)
{
	struct kshim_channel *kc = arg;

	for (;;) {
		void (*cb)(void *context);

		kshim_block(SP_IDLE, tasklet_ready, kc, 0, false);
		cb = kc->ch.onchannel_callback;
		kc->tasklet_running = true;
		kshim_atomic_enter();
		cb(kc->ch.channel_callback_context);
		kshim_atomic_exit();
		kc->tasklet_running = false;
	}
}

struct vmbus_channel *kshim_channel_create(u32 bus)
{
	struct kshim_channel *kc;
	char name[32];

	if (bus >= KSHIM_MAX_BUS)
		kshim_protocol_error("bus index out of range");
	if (channels[bus])
		return &channels[bus]->ch;
	kc = kshim_os_alloc(sizeof(*kc), 8);
	if (!kc)
		kshim_internal_error("out of memory");
	memset(kc, 0, sizeof(*kc));
	kc->bus = bus;
	kc->tail = &kc->head;
	kc->rescind_ctx = -1;
	kc->ch.callback_event.kshim = &kc->tasklet_running;
	spin_lock_init(&kc->ch.sched_lock);
	spin_lock_init(&kc->ch.requestor.req_lock);
	channels[bus] = kc;
	snprintf(name, sizeof(name), "tasklet:bus%u", bus);
	kc->tasklet_ctx = kshim_ctx_create(CTX_TASKLET, name, tasklet_main, kc);
	return &kc->ch;
}

static void drop_packets(struct kshim_channel *kc)
{
	while (kc->head) {
		struct kshim_packet *p = kc->head;

		kc->head = p->next;
		kshim_os_free(p);
	}
	kc->tail = &kc->head;
}

void kshim_vmbus_deliver(u32 bus, u16 type, u16 flags, u64 trans_id, const u8 *payload,
			 u32 len)
{
	struct kshim_channel *kc;
	u32 total = (sizeof(struct vmpacket_descriptor) + len + 7) & ~7u;
	struct vmpacket_descriptor desc = {
		.type = type,
		.offset8 = sizeof(struct vmpacket_descriptor) / 8,
		.len8 = total / 8,
		.flags = flags,
		.trans_id = trans_id,
	};
	struct kshim_packet *p;

	if (bus >= KSHIM_MAX_BUS)
		kshim_protocol_error("packet for a bus index out of range");
	/*
	 * The host may send before the driver opened the channel (the channel exists from its
	 * offer, before the driver's probe). vmbus_chan_sched ignores the interrupt while
	 * onchannel_callback is NULL, so the packet waits until the callback first runs after
	 * vmbus_open (tasklet_ready). A packet after vmbus_close has no ring to land in: dropped.
	 */
	kc = channels[bus] ? channels[bus] : kc_of(kshim_channel_create(bus));
	if (kc->closed) {
		kshim_event(EV_NOTE, "bus %u: packet after vmbus_close dropped", bus);
		return;
	}
	if (total > 0xffff * 8u)
		kshim_protocol_error("packet too long");
	p = kshim_os_alloc(sizeof(*p) + total, 8);
	if (!p)
		kshim_internal_error("out of memory");
	memset(p, 0, sizeof(*p) + total);
	p->len = total;
	p->trans_id = trans_id;
	memcpy(p->data, &desc, sizeof(desc));
	memcpy(p->data + sizeof(desc), payload, len);
	*kc->tail = p;
	kc->tail = &p->next;
}

/* Packets in the ring the driver has not read. */
static u32 count_packets(const struct kshim_channel *kc)
{
	u32 n = 0;

	for (const struct kshim_packet *p = kc->head; p; p = p->next)
		n++;
	return n;
}

/*
 * drivers/hv/channel_mgmt.c vmbus_onoffer_rescind, run in its own context as the kernel runs
 * it on a workqueue worker (the CHANNELMSG_RESCINDCHANNELOFFER work): first
 * vmbus_reset_channel_cb (tasklet_disable waits out a running callback, onchannel_callback
 * becomes NULL, so packets the tasklet had not yet read stay unread unless the driver polls the
 * ring itself), then vmbus_rescind_cleanup sets channel->rescind, the flag every waiter polls,
 * then it waits for the device's probe to finish and unregisters the device: the driver's
 * remove runs here, with whatever work the driver has queued or running. When the context runs
 * relative to the channel's tasklet is the scheduler's choice: packets delivered before the
 * rescind are processed or not.
 */
static void rescind_main(void *arg)
{
	struct kshim_channel *kc = arg;
	struct vmbus_channel *ch = &kc->ch;
	unsigned long flags;

	KSHIM_CALL("vmbus_onoffer_rescind");
	/* vmbus_reset_channel_cb */
	tasklet_disable(&ch->callback_event);
	spin_lock_irqsave(&ch->sched_lock, flags);
	ch->onchannel_callback = NULL;
	spin_unlock_irqrestore(&ch->sched_lock, flags);
	tasklet_enable(&ch->callback_event);
	/* vmbus_rescind_cleanup */
	KSHIM_CALL("vmbus_rescind_cleanup");
	ch->rescind = true;
	kshim_event(EV_NOTE,
		    "vmbus_onoffer_rescind bus %u: callback reset, rescind set, %u packets unread",
		    kc->bus, count_packets(kc));
	kshim_sched(SP_COMPLETE);
	/* probe_done, then vmbus_device_unregister */
	kshim_device_unregister(kc->bus);
	kshim_ctx_exit();
}

void kshim_vmbus_rescind(u32 bus)
{
	struct kshim_channel *kc;
	char name[40];

	if (bus >= KSHIM_MAX_BUS)
		kshim_protocol_error("rescind of a bus index out of range");
	kc = channels[bus] ? channels[bus] : kc_of(kshim_channel_create(bus));
	if (kc->rescind_ctx >= 0)
		kshim_protocol_error("a second rescind of the same channel");
	snprintf(name, sizeof(name), "vmbus_onoffer_rescind:bus%u", bus);
	kc->rescind_ctx = kshim_ctx_create(CTX_WORKER, name, rescind_main, kc);
}

/* drivers/hv/channel.c vmbus_alloc_requestor: a free list threaded through req_arr. */
static void requestor_init(struct vmbus_channel *ch)
{
	struct vmbus_requestor *r = &ch->requestor;
	u32 size = ch->rqstor_size;

	if (!size)
		return;
	r->req_arr = kshim_os_alloc(size * sizeof(u64), 8);
	r->req_bitmap = kshim_os_alloc(BITS_TO_LONGS(size) * sizeof(long), 8);
	if (!r->req_arr || !r->req_bitmap)
		kshim_internal_error("out of memory");
	for (u32 i = 0; i < size; i++)
		r->req_arr[i] = i + 1;
	r->req_arr[size - 1] = U64_MAX;
	memset(r->req_bitmap, 0, BITS_TO_LONGS(size) * sizeof(long));
	r->size = size;
	r->next_request_id = 0;
}

static void requestor_free(struct vmbus_channel *ch)
{
	struct vmbus_requestor *r = &ch->requestor;

	kshim_os_free(r->req_arr);
	kshim_os_free(r->req_bitmap);
	r->req_arr = NULL;
	r->req_bitmap = NULL;
	r->size = 0;
}

/* Allocates an id 1..size for rqst_addr; VMBUS_RQST_ERROR when the table is full. */
u64 vmbus_next_request_id(struct vmbus_channel *ch, u64 rqst_addr)
{
	struct vmbus_requestor *r = &ch->requestor;
	unsigned long flags;
	u64 id;

	if (!ch->rqstor_size || !r->req_arr)
		return U64_MAX; /* VMBUS_NO_RQSTOR */
	lock_requestor(ch, flags);
	id = r->next_request_id;
	if (id >= r->size) {
		unlock_requestor(ch, flags);
		return VMBUS_RQST_ERROR;
	}
	r->next_request_id = r->req_arr[id];
	r->req_arr[id] = rqst_addr;
	set_bit(id, r->req_bitmap);
	unlock_requestor(ch, flags);
	return id + 1;
}

/*
 * Returns the address stored for trans_id and frees the id if rqst_addr matches it (or is
 * VMBUS_RQST_ADDR_ANY); VMBUS_RQST_ERROR for 0, out-of-range or unallocated ids. Called with
 * the requestor lock held.
 */
u64 __vmbus_request_addr_match(struct vmbus_channel *ch, u64 trans_id, u64 rqst_addr)
{
	struct vmbus_requestor *r = &ch->requestor;
	u64 addr;

	KSHIM_CALL("__vmbus_request_addr_match");
	if (!r->req_arr || trans_id == 0)
		return VMBUS_RQST_ERROR;
	trans_id--;
	if (trans_id >= r->size || !test_bit(trans_id, r->req_bitmap))
		return VMBUS_RQST_ERROR;
	addr = r->req_arr[trans_id];
	if (rqst_addr == VMBUS_RQST_ADDR_ANY || addr == rqst_addr) {
		r->req_arr[trans_id] = r->next_request_id;
		r->next_request_id = trans_id;
		clear_bit(trans_id, r->req_bitmap);
	}
	return addr;
}

u64 vmbus_request_addr_match(struct vmbus_channel *ch, u64 trans_id, u64 rqst_addr)
{
	unsigned long flags;
	u64 addr;

	lock_requestor(ch, flags);
	addr = __vmbus_request_addr_match(ch, trans_id, rqst_addr);
	unlock_requestor(ch, flags);
	return addr;
}

u64 vmbus_request_addr(struct vmbus_channel *ch, u64 trans_id)
{
	return vmbus_request_addr_match(ch, trans_id, VMBUS_RQST_ADDR_ANY);
}

int vmbus_open(struct vmbus_channel *ch, u32 send_size, u32 recv_size, void *userdata,
	       u32 userdatalen, void (*cb)(void *context), void *context)
{
	struct kshim_channel *kc = kc_of(ch);
	unsigned long flags;

	KSHIM_CALL("vmbus_open");
	if (ch->rescind)
		return -ENODEV;
	kshim_event(EV_NOTE, "vmbus_open bus %u rings %u/%u", kc->bus, send_size, recv_size);
	ch->channel_callback_context = context;
	spin_lock_irqsave(&ch->sched_lock, flags);
	ch->onchannel_callback = cb;
	spin_unlock_irqrestore(&ch->sched_lock, flags);
	requestor_init(ch);
	kc->open = true;
	kc->closed = false;
	kshim_sched(SP_SEND);
	return 0;
}

/* vmbus_close -> vmbus_reset_channel_cb: stop the callback, wait out a running one. */
void vmbus_close(struct vmbus_channel *ch)
{
	struct kshim_channel *kc = kc_of(ch);
	unsigned long flags;

	KSHIM_CALL("vmbus_close");
	tasklet_disable(&ch->callback_event);
	spin_lock_irqsave(&ch->sched_lock, flags);
	ch->onchannel_callback = NULL;
	spin_unlock_irqrestore(&ch->sched_lock, flags);
	tasklet_enable(&ch->callback_event);
	kc->open = false;
	kc->closed = true;
	drop_packets(kc);
	requestor_free(ch);
	kshim_event(EV_NOTE, "vmbus_close bus %u", kc->bus);
	kshim_sched(SP_SEND);
}

/*
 * hv_ringbuffer_write: -ENODEV on a rescinded channel; with a requestor, a packet that asks
 * for a completion carries a fresh small id (-EAGAIN when none is free), otherwise the caller's
 * requestid goes out as is (5.10: a raw guest pointer).
 */
int vmbus_sendpacket_getid(struct vmbus_channel *ch, void *buffer, u32 bufferlen,
			   u64 requestid, u64 *trans_id, enum vmbus_packet_type type, u32 flags)
{
	struct kshim_channel *kc = kc_of(ch);
	struct kshim_wbuf w;
	u64 id = requestid;

	KSHIM_CALL("vmbus_sendpacket");
	if (ch->rescind)
		return -ENODEV;
	if (flags == VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED && ch->next_request_id_callback) {
		id = ch->next_request_id_callback(ch, requestid);
		if (id == VMBUS_RQST_ERROR)
			return -EAGAIN;
	}
	if (bufferlen > 4096)
		kshim_internal_error("packet larger than the frame buffer");
	kshim_wbuf_init(&w);
	kshim_put_u32(&w, kc->bus);
	kshim_put_u16(&w, type);
	kshim_put_u16(&w, flags);
	kshim_put_u64(&w, id);
	kshim_put_bytes(&w, buffer, bufferlen);
	kshim_send_frame(G_SEND, &w);
	if (trans_id)
		*trans_id = id;
	kshim_sched(SP_SEND);
	return 0;
}

int vmbus_sendpacket(struct vmbus_channel *ch, void *buffer, u32 bufferlen, u64 requestid,
		     enum vmbus_packet_type type, u32 flags)
{
	return vmbus_sendpacket_getid(ch, buffer, bufferlen, requestid, NULL, type, flags);
}

/*
 * Copies the next whole packet (descriptor included). Empty ring: 0 with *actual = 0. A
 * buffer too small: -ENOBUFS with *actual set to the needed length, packet kept.
 */
int vmbus_recvpacket_raw(struct vmbus_channel *ch, void *buffer, u32 bufferlen, u32 *actual,
			 u64 *requestid)
{
	struct kshim_channel *kc = kc_of(ch);
	struct kshim_packet *p;

	KSHIM_CALL("vmbus_recvpacket_raw");
	kshim_sched(SP_RECV);
	p = kc->head;
	if (!p) {
		*actual = 0;
		return 0;
	}
	*actual = p->len;
	if (p->len > bufferlen)
		return -ENOBUFS;
	memcpy(buffer, p->data, p->len);
	*requestid = p->trans_id;
	kc->head = p->next;
	if (!kc->head)
		kc->tail = &kc->head;
	kshim_os_free(p);
	return 0;
}

/*
 * ---- MMIO space (drivers/hv/vmbus_drv.c vmbus_allocate_mmio) ----
 * A bump allocator over a low range (below 4 GB) and a high one; each range handed out is a
 * struct resource the driver later gives back with vmbus_free_mmio.
 */
struct mmio_range {
	struct mmio_range *next;
	struct resource *res;
};
static struct mmio_range *mmio_ranges;
static u64 mmio_low_next = 0xc0000000ULL;
static const u64 mmio_low_end = 0xfe000000ULL;
static u64 mmio_high_next = 0x1000000000ULL;
static const u64 mmio_high_end = 0x8000000000ULL;

int vmbus_allocate_mmio(struct resource **new, struct hv_device *device_obj,
			resource_size_t min, resource_size_t max, resource_size_t size,
			resource_size_t align, bool fb_overlap_ok)
{
	bool high = min >= 0x100000000ULL;
	u64 *next = high ? &mmio_high_next : &mmio_low_next;
	u64 end = high ? mmio_high_end : mmio_low_end;
	struct mmio_range *r;
	struct resource *res;
	u64 start;

	KSHIM_CALL("vmbus_allocate_mmio");
	if (!size || (align & (align - 1)))
		return -EINVAL;
	start = align ? (*next + align - 1) & ~(align - 1) : *next;
	if (start < min)
		start = align ? (min + align - 1) & ~(align - 1) : min;
	if (start + size < start || start + size > end || start + size - 1 > max)
		return -ENOSPC;
	res = kzalloc(sizeof(*res), GFP_KERNEL);
	r = kshim_os_alloc(sizeof(*r), 8);
	if (!res || !r)
		return -ENOMEM;
	res->start = start;
	res->end = start + size - 1;
	res->name = "PCI Bus";
	res->flags = IORESOURCE_MEM | IORESOURCE_BUSY;
	r->res = res;
	r->next = mmio_ranges;
	mmio_ranges = r;
	*next = start + size;
	*new = res;
	return 0;
}

void vmbus_free_mmio(resource_size_t start, resource_size_t size)
{
	KSHIM_CALL("vmbus_free_mmio");
	for (struct mmio_range **pp = &mmio_ranges; *pp; pp = &(*pp)->next) {
		struct mmio_range *r = *pp;

		if (r->res->start == start) {
			*pp = r->next;
			kfree(r->res);
			kshim_os_free(r);
			return;
		}
	}
	kshim_event(EV_BUG, "vmbus_free_mmio of %#llx, which was never allocated", start);
}

/*
 * ---- mappings (arch/x86/mm/ioremap.c) and MMIO accessors (arch/x86/include/asm/io.h) ----
 * ioremap returns a cookie that faults if dereferenced directly; the accessors turn an access
 * through it into G_MMIO_READ / G_MMIO_WRITE of the physical address (the config window or a
 * BAR), which the controller answers from its device model. Each access is a scheduling point.
 */
#define IOMAP_BASE 0xffffc90000000000ULL
struct iomap {
	struct iomap *next;
	u64 phys;
	u64 size;
};
static struct iomap *iomaps;

void kshim_mmio_init(void)
{
	iomaps = NULL;
}

void __iomem *ioremap(resource_size_t offset, unsigned long size)
{
	struct iomap *m;

	KSHIM_CALL("ioremap");
	if (offset >= (1ULL << 40) || !size)
		return NULL;
	m = kshim_os_alloc(sizeof(*m), 8);
	if (!m)
		return NULL;
	m->phys = offset;
	m->size = size;
	m->next = iomaps;
	iomaps = m;
	return (void __iomem *)(uintptr_t)(IOMAP_BASE + offset);
}

void iounmap(volatile void __iomem *addr)
{
	u64 phys = (uintptr_t)addr - IOMAP_BASE;

	KSHIM_CALL("iounmap");
	if (!addr)
		return;
	for (struct iomap **pp = &iomaps; *pp; pp = &(*pp)->next)
		if ((*pp)->phys == phys) {
			struct iomap *m = *pp;

			*pp = m->next;
			kshim_os_free(m);
			return;
		}
	kshim_event(EV_BUG, "iounmap of %p, which is not mapped", (void *)addr);
}

static bool mapped(const volatile void *addr, u32 size, u64 *phys)
{
	u64 a = (uintptr_t)addr - IOMAP_BASE;

	for (struct iomap *m = iomaps; m; m = m->next)
		if (a >= m->phys && a + size <= m->phys + m->size) {
			*phys = a;
			return true;
		}
	return false;
}

/* One access of a guest physical address, as the controller's device model sees it. */
static u64 phys_read(u64 phys, u32 size)
{
	struct kshim_wbuf w;

	kshim_wbuf_init(&w);
	kshim_put_u64(&w, phys);
	kshim_put_u32(&w, size);
	return kshim_call_value(G_MMIO_READ, &w);
}

static void phys_write(u64 phys, u32 size, u64 value)
{
	struct kshim_wbuf w;

	kshim_wbuf_init(&w);
	kshim_put_u64(&w, phys);
	kshim_put_u32(&w, size);
	kshim_put_u64(&w, value);
	kshim_send_frame(G_MMIO_WRITE, &w);
}

static u64 mmio_read(const volatile void *addr, u32 size)
{
	u64 phys;

	kshim_sched(SP_MMIO);
	if (!mapped(addr, size, &phys)) {
		kshim_event(EV_BUG, "MMIO read of unmapped address %p", (void *)addr);
		return ~0ULL;
	}
	return phys_read(phys, size);
}

static void mmio_write(volatile void *addr, u32 size, u64 value)
{
	u64 phys;

	kshim_sched(SP_MMIO);
	if (!mapped(addr, size, &phys)) {
		kshim_event(EV_BUG, "MMIO write of unmapped address %p", (void *)addr);
		return;
	}
	phys_write(phys, size, value);
}

u8 readb(const volatile void __iomem *addr)
{
	KSHIM_CALL("readb");
	return mmio_read(addr, 1);
}

u16 readw(const volatile void __iomem *addr)
{
	KSHIM_CALL("readw");
	return mmio_read(addr, 2);
}

u32 readl(const volatile void __iomem *addr)
{
	KSHIM_CALL("readl");
	return mmio_read(addr, 4);
}

void writeb(u8 value, volatile void __iomem *addr)
{
	KSHIM_CALL("writeb");
	mmio_write(addr, 1, value);
}

void writew(u16 value, volatile void __iomem *addr)
{
	KSHIM_CALL("writew");
	mmio_write(addr, 2, value);
}

void writel(u32 value, volatile void __iomem *addr)
{
	KSHIM_CALL("writel");
	mmio_write(addr, 4, value);
}

/* ---- Hyper-V arch (arch/x86/include/asm/mshyperv.h, hv_init.c) ---- */
bool hv_is_hyperv_initialized(void)
{
	return true;
}

/* VP index = CPU number, as on a VM whose vCPUs were brought up in order. */
u32 hv_cpu_number_to_vp_number(int cpu_number)
{
	return cpu_number;
}

/*
 * include/asm-generic/mshyperv.h __cpumask_to_vpset: sparse 4K format, one bank per 64 VPs;
 * returns the number of banks (all banks up to the highest VP index are counted).
 */
int cpumask_to_vpset(struct hv_vpset *vpset, const struct cpumask *cpus)
{
	int nr_bank = (NR_CPUS - 1) / 64 + 1;

	vpset->format = HV_GENERIC_SET_SPARSE_4K;
	vpset->valid_bank_mask = 0;
	for (int i = 0; i < nr_bank; i++)
		vpset->bank_contents[i] = 0;
	for (unsigned int cpu = 0; cpu < nr_cpu_ids; cpu++) {
		u32 vp;

		if (!test_bit(cpu, cpus->bits))
			continue;
		vp = hv_cpu_number_to_vp_number(cpu);
		vpset->bank_contents[vp / 64] |= 1ULL << (vp % 64);
		vpset->valid_bank_mask |= 1ULL << (vp / 64);
	}
	return nr_bank;
}

/*
 * ---- what drivers/hv/hv_common.c sets up at boot ----
 * ms_hyperv: the hints word is 0 (a VM without MMIO hypercalls) until CMD_HV_HINTS.
 * hyperv_pcpu_input_arg: a per-CPU pointer (one copy per context, see kshim_this_cpu_ptr) to
 * that CPU's page-aligned hypercall input page.
 */
struct ms_hyperv_info ms_hyperv;
static u8 input_pages[KSHIM_MAX_CTX][HV_HYP_PAGE_SIZE] __aligned(HV_HYP_PAGE_SIZE);
static void *input_arg[KSHIM_MAX_CTX];
void **hyperv_pcpu_input_arg = input_arg;

void kshim_hv_init(void)
{
	memset(&ms_hyperv, 0, sizeof(ms_hyperv));
	for (int i = 0; i < KSHIM_MAX_CTX; i++)
		input_arg[i] = input_pages[i];
}

#define HV_STATUS_INVALID_PARAMETER 5

static bool mmio_call_size_ok(u32 size)
{
	return size == 1 || size == 2 || size == 4 || size == 8;
}

/*
 * HvCallMemoryMappedIoRead/Write: the hypervisor performs the access of the guest physical
 * address for the guest, so the controller sees the same G_MMIO_READ / G_MMIO_WRITE an
 * access through a mapping makes (no mapping is needed). Sizes other than 1, 2, 4 and 8 fail
 * with HV_STATUS_INVALID_PARAMETER, as the accesses the TLFS allows are register-sized.
 */
static u64 mmio_hypercall(u64 code, void *input, void *output)
{
	if (code == HVCALL_MMIO_READ) {
		struct hv_mmio_read_input *in = input;
		struct hv_mmio_read_output *out = output;
		u64 value;

		if (!out || !mmio_call_size_ok(in->size))
			return HV_STATUS_INVALID_PARAMETER;
		value = phys_read(in->gpa, in->size);
		memset(out->data, 0, sizeof(out->data));
		memcpy(out->data, &value, in->size);
		return HV_STATUS_SUCCESS;
	} else {
		struct hv_mmio_write_input *in = input;
		u64 value = 0;

		if (!mmio_call_size_ok(in->size))
			return HV_STATUS_INVALID_PARAMETER;
		memcpy(&value, in->data, in->size);
		phys_write(in->gpa, in->size, value);
		return HV_STATUS_SUCCESS;
	}
}

/*
 * The hypercall, decoded by the controller: control word and input. For
 * HVCALL_RETARGET_INTERRUPT the input is the fixed 56-byte header plus (var-size) 8-byte words.
 * The MMIO calls are performed by the runtime (above).
 */
u64 hv_do_hypercall(u64 control, void *input, void *output)
{
	struct kshim_wbuf w;
	u32 size = 0;

	KSHIM_CALL("hv_do_hypercall");
	kshim_sched(SP_HYPERCALL);
	if ((control & 0xffff) == HVCALL_MMIO_READ || (control & 0xffff) == HVCALL_MMIO_WRITE)
		return mmio_hypercall(control & 0xffff, input, output);
	if ((control & 0xffff) == HVCALL_RETARGET_INTERRUPT)
		size = 56 + 8 * ((control >> 17) & 0x3ff);
	if (size > 4096)
		size = 4096;
	kshim_wbuf_init(&w);
	kshim_put_u64(&w, control);
	kshim_put_bytes(&w, input, size);
	return kshim_call_value(G_HYPERCALL, &w);
}

/* ---- driver registration (drivers/hv/vmbus_drv.c) ---- */
static struct hv_driver *registered;
struct hyperv_pci_block_ops hvpci_block_ops;

int __vmbus_driver_register(struct hv_driver *drv, struct module *owner, const char *mod_name)
{
	KSHIM_CALL("vmbus_driver_register");
	registered = drv;
	return 0;
}

void vmbus_driver_unregister(struct hv_driver *drv)
{
	KSHIM_CALL("vmbus_driver_unregister");
	if (registered == drv)
		registered = NULL;
}

struct hv_driver *kshim_registered_driver(void)
{
	return registered;
}
