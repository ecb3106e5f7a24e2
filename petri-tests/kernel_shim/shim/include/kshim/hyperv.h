/* SPDX-License-Identifier: MIT */
/*
 * kshim hyperv: GUIDs, VMBus devices, channels and drivers, the packet header, and the
 * Hyper-V retarget-interrupt hypercall (include/linux/uuid.h, include/linux/hyperv.h,
 * drivers/hv/channel.c, include/asm-generic/hyperv-tlfs.h, include/asm-generic/mshyperv.h,
 * arch/x86/include/asm/mshyperv.h; layouts from the Hyper-V TLFS and the VMBus wire format).
 */
#ifndef KSHIM_HYPERV_H
#define KSHIM_HYPERV_H

#include <kshim/core.h>
#include <kshim/sync.h>
#include <kshim/device.h>
#include <kshim/irq.h>

/* ---- GUIDs (include/linux/uuid.h): the first three fields little-endian ---- */
typedef struct {
	__u8 b[16];
} guid_t;
#define GUID_INIT(a, b, c, d0, d1, d2, d3, d4, d5, d6, d7) \
	((guid_t){ { (a) & 0xff, ((a) >> 8) & 0xff, ((a) >> 16) & 0xff, ((a) >> 24) & 0xff, \
		     (b) & 0xff, ((b) >> 8) & 0xff, (c) & 0xff, ((c) >> 8) & 0xff, \
		     (d0), (d1), (d2), (d3), (d4), (d5), (d6), (d7) } })
/* The vPCI bus device class 44C4F61D-4444-4400-9D52-802E27EDE19F. */
#define HV_PCIE_GUID \
	.guid = GUID_INIT(0x44c4f61d, 0x4444, 0x4400, 0x9d, 0x52, 0x80, 0x2e, 0x27, 0xed, \
			  0xe1, 0x9f)

/* ---- VMBus packets (include/linux/hyperv.h; the 16-byte wire descriptor) ---- */
struct vmpacket_descriptor {
	u16 type;
	u16 offset8;
	u16 len8;
	u16 flags;
	u64 trans_id;
} __packed;
enum vmbus_packet_type {
	VM_PKT_INVALID = 0x0,
	VM_PKT_DATA_INBAND = 0x6,
	VM_PKT_COMP = 0xb,
};
#define VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED 1

/* A ring of payload_sz bytes plus its 4 KB control page, page aligned (6.1). */
#define VMBUS_RING_SIZE(payload_sz) PAGE_ALIGN(4096 + (payload_sz))

/* 6.1 requestor (drivers/hv/channel.c): maps small transaction ids to request addresses. */
#define VMBUS_RQST_ERROR (U64_MAX - 1)
#define VMBUS_RQST_ADDR_ANY U64_MAX
struct vmbus_requestor {
	u64 *req_arr;
	unsigned long *req_bitmap;
	u32 size;
	u64 next_request_id;
	spinlock_t req_lock;
};
#define lock_requestor(channel, flags) \
	spin_lock_irqsave(&(channel)->requestor.req_lock, flags)
#define unlock_requestor(channel, flags) \
	spin_unlock_irqrestore(&(channel)->requestor.req_lock, flags)

struct vmbus_channel {
	/* Set by the host's rescind; every waiter in the driver polls it. */
	bool rescind;
	/* The tasklet that runs onchannel_callback. */
	struct tasklet_struct callback_event;
	void (*onchannel_callback)(void *context);
	void *channel_callback_context;
	spinlock_t sched_lock;
	u64 (*next_request_id_callback)(struct vmbus_channel *channel, u64 rqst_addr);
	u64 (*request_addr_callback)(struct vmbus_channel *channel, u64 trans_id);
	u32 rqstor_size;
	struct vmbus_requestor requestor;
	/* The runtime's channel state (packet queues, the scheduled tasklet). */
	void *kshim;
};

struct hv_vmbus_device_id {
	guid_t guid;
	kernel_ulong_t driver_data;
};

struct hv_device {
	guid_t dev_type;
	guid_t dev_instance;
	u16 vendor_id;
	u16 device_id;
	struct device device;
	struct vmbus_channel *channel;
};
static inline void *hv_get_drvdata(struct hv_device *dev)
{
	return dev_get_drvdata(&dev->device);
}
static inline void hv_set_drvdata(struct hv_device *dev, void *data)
{
	dev_set_drvdata(&dev->device, data);
}

struct hv_driver {
	const char *name;
	bool hvsock;
	const struct hv_vmbus_device_id *id_table;
	int (*probe)(struct hv_device *dev, const struct hv_vmbus_device_id *id);
#if KSHIM_KVER >= 603
	/* 6.3 on: remove cannot fail. */
	void (*remove)(struct hv_device *dev);
#else
	int (*remove)(struct hv_device *dev);
#endif
	void (*shutdown)(struct hv_device *dev);
	int (*suspend)(struct hv_device *dev);
	int (*resume)(struct hv_device *dev);
};

int vmbus_open(struct vmbus_channel *channel, u32 send_ringbuffersize,
	       u32 recv_ringbuffersize, void *userdata, u32 userdatalen,
	       void (*onchannel_callback)(void *context), void *context);
void vmbus_close(struct vmbus_channel *channel);
int vmbus_sendpacket(struct vmbus_channel *channel, void *buffer, u32 bufferlen,
		     u64 requestid, enum vmbus_packet_type type, u32 flags);
int vmbus_sendpacket_getid(struct vmbus_channel *channel, void *buffer, u32 bufferlen,
			   u64 requestid, u64 *trans_id, enum vmbus_packet_type type,
			   u32 flags);
int vmbus_recvpacket_raw(struct vmbus_channel *channel, void *buffer, u32 bufferlen,
			 u32 *buffer_actual_len, u64 *requestid);
int vmbus_allocate_mmio(struct resource **new, struct hv_device *device_obj,
			resource_size_t min, resource_size_t max, resource_size_t size,
			resource_size_t align, bool fb_overlap_ok);
void vmbus_free_mmio(resource_size_t start, resource_size_t size);
int __vmbus_driver_register(struct hv_driver *hv_driver, struct module *owner,
			    const char *mod_name);
#define vmbus_driver_register(driver) \
	__vmbus_driver_register((driver), THIS_MODULE, KBUILD_MODNAME)
void vmbus_driver_unregister(struct hv_driver *hv_driver);
u64 vmbus_next_request_id(struct vmbus_channel *channel, u64 rqst_addr);
u64 vmbus_request_addr(struct vmbus_channel *channel, u64 trans_id);
u64 __vmbus_request_addr_match(struct vmbus_channel *channel, u64 trans_id, u64 rqst_addr);
u64 vmbus_request_addr_match(struct vmbus_channel *channel, u64 trans_id, u64 rqst_addr);

/* ---- Hyper-V TLFS: retarget device interrupt (HvCallRetargetDeviceInterrupt) ---- */
#define HV_HYP_PAGE_SIZE 4096
#define HV_PARTITION_ID_SELF ((u64)-1)
#define HVCALL_RETARGET_INTERRUPT 0x007e
#define HV_DEVICE_INTERRUPT_TARGET_MULTICAST 1
#define HV_DEVICE_INTERRUPT_TARGET_PROCESSOR_SET 2
#define HV_INTERRUPT_SOURCE_MSI 1
#define HV_CONFIG_BLOCK_SIZE_MAX 128
#define HV_GENERIC_SET_SPARSE_4K 0
#define HV_STATUS_SUCCESS 0

#if KSHIM_KVER >= 601
union hv_msi_address_register {
	u32 as_uint32;
	struct {
		u32 reserved1 : 2;
		u32 destination_mode : 1;
		u32 redirection_hint : 1;
		u32 reserved2 : 8;
		u32 destination_id : 8;
		u32 msi_base : 12;
	};
} __packed;
union hv_msi_data_register {
	u32 as_uint32;
	struct {
		u32 vector : 8;
		u32 delivery_mode : 3;
		u32 reserved1 : 3;
		u32 level_assert : 1;
		u32 trigger_mode : 1;
		u32 reserved2 : 16;
	};
} __packed;
struct hv_msi_entry {
	union hv_msi_address_register address;
	union hv_msi_data_register data;
} __packed;
#else
struct hv_msi_entry {
	u32 address;
	u32 data;
} __packed;
#endif
struct hv_interrupt_entry {
	u32 source;
	u32 reserved1;
	struct hv_msi_entry msi_entry;
} __packed;
/* The bank array runs past the struct: the caller provides the room. */
struct hv_vpset {
	u64 format;
	u64 valid_bank_mask;
	u64 bank_contents[];
} __packed;
struct hv_device_interrupt_target {
	u32 vector;
	u32 flags;
	union {
		u64 vp_mask;
		struct hv_vpset vp_set;
	};
} __packed;
struct hv_retarget_device_interrupt {
	u64 partition_id;
	u64 device_id;
	struct hv_interrupt_entry int_entry;
	u64 reserved2;
	struct hv_device_interrupt_target int_target;
} __packed __aligned(8);

/*
 * ---- HvCallMemoryMappedIoRead / HvCallMemoryMappedIoWrite (6.2 on) ----
 * The hypervisor performs a config-space access of up to 64 bytes at a guest physical address
 * on the guest's behalf; 6.2 on uses them when the hint below is set (confidential VMs).
 */
#define HVCALL_MMIO_READ 0x0106
#define HVCALL_MMIO_WRITE 0x0107
#define HV_HYPERCALL_MMIO_MAX_DATA_LENGTH 64
struct hv_mmio_read_input {
	u64 gpa;
	u32 size;
	u32 reserved;
} __packed;
struct hv_mmio_read_output {
	u8 data[HV_HYPERCALL_MMIO_MAX_DATA_LENGTH];
} __packed;
struct hv_mmio_write_input {
	u64 gpa;
	u32 size;
	u32 reserved;
	u8 data[HV_HYPERCALL_MMIO_MAX_DATA_LENGTH];
} __packed;

/*
 * ---- what Hyper-V told the guest at boot (include/asm-generic/mshyperv.h,
 * arch/x86/include/asm/hyperv-tlfs.h): the CPUID leaves' feature and hint words ----
 */
#define HV_X64_USE_MMIO_HYPERCALLS (1u << 21)
struct ms_hyperv_info {
	u32 features;
	u32 priv_high;
	u32 misc_features;
	u32 hints;
};
/* The runtime's: hints 0 (no MMIO hypercalls) unless the controller sets them. */
extern struct ms_hyperv_info ms_hyperv;
/*
 * One hypercall input page per CPU (drivers/hv/hv_common.c allocates them at boot); used with
 * interrupts off through *this_cpu_ptr(hyperv_pcpu_input_arg).
 */
extern void **hyperv_pcpu_input_arg;

bool hv_is_hyperv_initialized(void);
u64 hv_do_hypercall(u64 control, void *input, void *output);
u32 hv_cpu_number_to_vp_number(int cpu_number);
int cpumask_to_vpset(struct hv_vpset *vpset, const struct cpumask *cpus);
/* include/asm-generic/mshyperv.h: the low 16 bits of a hypercall result are its status. */
static inline bool hv_result_success(u64 status)
{
	return (status & 0xffff) == HV_STATUS_SUCCESS;
}

#endif /* KSHIM_HYPERV_H */
