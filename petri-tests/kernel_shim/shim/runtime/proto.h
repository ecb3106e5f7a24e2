/* SPDX-License-Identifier: MIT */
/*
 * The guest <-> controller protocol over the guest process's stdin (controller to guest) and
 * stdout (guest to controller). Every frame is a little-endian header { u32 payload_len;
 * u32 type; } followed by payload_len bytes. The Rust side mirrors these numbers in
 * src/protocol.rs; change both together.
 *
 * The guest drives the conversation: at every scheduling point it sends G_SCHED and reads
 * controller frames until one is C_RUN. C_PACKET, C_RESCIND, C_ADVANCE and C_COMMAND change
 * the guest's world (and so the runnable set), after which the guest sends a fresh G_SCHED.
 * G_MMIO_READ and G_HYPERCALL are answered by exactly one C_VALUE.
 */
#ifndef KSHIM_PROTO_H
#define KSHIM_PROTO_H

/* guest -> controller */
#define G_HELLO 0x100 /* u32 kver, then the driver's Debian package version (text) */
#define G_CTX 0x101 /* u32 id, u32 kind, then the name (text) */
#define G_SCHED 0x102 /* u32 point, u32 current, u64 now_ns, u64 next_deadline_ns, u32 n, u32 ids[n],
			 * u32 m, u64 callers[m] (return addresses relative to the executable's
			 * start, innermost first), then the last shim call (text) */
#define G_SEND 0x103 /* u32 bus, u16 type, u16 flags, u64 trans_id, then the payload */
#define G_MMIO_READ 0x104 /* u64 addr, u32 size -> C_VALUE */
#define G_MMIO_WRITE 0x105 /* u64 addr, u32 size, u64 value */
#define G_HYPERCALL 0x106 /* u64 control, then the input bytes -> C_VALUE (status) */
#define G_LOG 0x107 /* u32 level, u32 ctx, then the text */
#define G_EVENT 0x108 /* u32 kind, u32 ctx, then the text */
#define G_RESULT 0x109 /* u32 command, s32 result */
#define G_DONE 0x10a /* u32 outstanding allocations */
#define G_CRASH 0x10b /* u32 signal, u32 ctx, then the last shim call (text) */

/* controller -> guest */
#define C_RUN 0x200 /* u32 ctx: must be in the last G_SCHED's runnable set */
#define C_PACKET 0x201 /* u32 bus, u16 type, u16 flags, u64 trans_id, then the payload */
#define C_RESCIND 0x202 /* u32 bus */
#define C_ADVANCE 0x203 /* u64 now_ns: virtual time moves forward to it */
#define C_COMMAND 0x204 /* u32 command, u32 bus, then its argument bytes */
#define C_VALUE 0x205 /* u64 value */

/* commands for the process context */
#define CMD_INIT 1 /* init_module() */
#define CMD_PROBE 2 /* arg: 16-byte instance GUID; driver->probe() */
#define CMD_REMOVE 3 /* driver->remove() */
#define CMD_SUSPEND 4 /* driver->suspend() */
#define CMD_RESUME 5 /* driver->resume() */
#define CMD_EXIT 6 /* cleanup_module(), leak report, G_DONE, exit 0 */
#define CMD_ENDPOINT 7 /* arg: u32 nvec, u32 use_msix: what the test endpoint driver allocates */
#define CMD_FAIL_ALLOC 8 /* arg: u32 n: the n-th allocation from now fails (0: none) */
#define CMD_HV_HINTS 9 /* arg: u32 hints: ms_hyperv.hints as Hyper-V's CPUID would report them */

/* context kinds */
#define CTX_PROCESS 0
#define CTX_TASKLET 1
#define CTX_WORKER 2

/* scheduling points: why the running context offers the baton */
#define SP_START 0
#define SP_IDLE 1 /* waiting for something to do (command, packet, work) */
#define SP_SPIN_LOCK 2
#define SP_SPIN_UNLOCK 3
#define SP_MUTEX_LOCK 4
#define SP_MUTEX_UNLOCK 5
#define SP_COMPLETE 6
#define SP_WAIT 7 /* wait_for_completion* */
#define SP_TASKLET_DISABLE 8
#define SP_TASKLET_ENABLE 9
#define SP_QUEUE_WORK 10
#define SP_FLUSH 11 /* flush_workqueue, destroy_workqueue */
#define SP_SEND 12
#define SP_RECV 13
#define SP_UDELAY 14
#define SP_MMIO 15
#define SP_HYPERCALL 16
#define SP_ALLOC 17

/* event kinds */
#define EV_WARN 1 /* WARN_ON_ONCE or refcount saturation */
#define EV_BUG 2 /* a kernel BUG: sleeping in atomic context, double free, bad unlock */
#define EV_LEAK 3 /* an allocation outstanding at exit */
#define EV_NOTE 4 /* a milestone worth a trace line (endpoint bound, irq allocated, ...) */
#define EV_LEAK_STACK 5 /* right after an EV_LEAK: its allocation stack, "exe+0x..." each */

/* exit statuses other than 0 and 128 + signal */
#define KSHIM_EXIT_PIPE 3 /* the controller went away */
#define KSHIM_EXIT_INTERNAL 4 /* a runtime invariant broke */
#define KSHIM_EXIT_PROTOCOL 5 /* the controller broke the protocol */

#endif /* KSHIM_PROTO_H */
