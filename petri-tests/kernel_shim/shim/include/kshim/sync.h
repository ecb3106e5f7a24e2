/* SPDX-License-Identifier: MIT */
/*
 * kshim sync: spinlocks, mutexes, completions, tasklets, workqueues, delays and jiffies.
 *
 * Every out-of-line call here is a scheduling point of the runtime's deterministic scheduler
 * (see runtime/sched.c): blocking calls hand the baton to another context; locking and waking
 * calls let the scheduler choose who runs next.
 */
#ifndef KSHIM_SYNC_H
#define KSHIM_SYNC_H

#include <kshim/core.h>

/* ---- time (include/linux/jiffies.h; Debian's kernels use CONFIG_HZ=250) ---- */
#define HZ 250

/* include/linux/delay.h: a busy wait; the runtime lets other contexts (the host) progress. */
void udelay(unsigned long usecs);

/*
 * ---- spinlocks (include/linux/spinlock.h, kernel/locking/spinlock.c) ----
 * Mutual exclusion that never sleeps. _irqsave also keeps the channel tasklet of this CPU from
 * running: the runtime treats a context that holds a spinlock as atomic.
 */
typedef struct {
	int locked;
	int owner;
} spinlock_t;
typedef spinlock_t raw_spinlock_t;
#define __SPIN_LOCK_UNLOCKED(name) { 0, -1 }
#define DEFINE_SPINLOCK(name) spinlock_t name = __SPIN_LOCK_UNLOCKED(name)
static inline void spin_lock_init(spinlock_t *lock)
{
	lock->locked = 0;
	lock->owner = -1;
}
unsigned long _raw_spin_lock_irqsave(spinlock_t *lock);
void _raw_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);
#define spin_lock_irqsave(lock, flags) \
	do { (flags) = _raw_spin_lock_irqsave(lock); } while (0)
#define spin_unlock_irqrestore(lock, flags) _raw_spin_unlock_irqrestore((lock), (flags))

/*
 * ---- local interrupt disabling (include/linux/irqflags.h, arch/x86/include/asm/irqflags.h) ----
 * Interrupts off on this CPU: neither preemption nor this CPU's tasklets until they are
 * restored. The runtime makes the caller atomic in between (sleeping is a BUG), like holding a
 * spinlock; neither call is a scheduling point. Restore without a save is a BUG.
 */
unsigned long arch_local_irq_save(void);
void arch_local_irq_restore(unsigned long flags);
#define local_irq_save(flags) do { (flags) = arch_local_irq_save(); } while (0)
#define local_irq_restore(flags) arch_local_irq_restore(flags)

/* ---- mutexes (include/linux/mutex.h, kernel/locking/mutex.c): a sleeping lock ---- */
struct lock_class_key {
	int unused;
};
struct mutex {
	int locked;
	int owner;
	const char *name;
};
void __mutex_init(struct mutex *lock, const char *name, struct lock_class_key *key);
#define mutex_init(mutex) do { \
	static struct lock_class_key __kkey; \
	__mutex_init((mutex), #mutex, &__kkey); \
} while (0)
void mutex_lock(struct mutex *lock);
void mutex_unlock(struct mutex *lock);

/* ---- semaphores: the driver includes the header but uses none ---- */
struct semaphore {
	int count;
};

/*
 * ---- completions (include/linux/completion.h, kernel/sched/completion.c) ----
 * done counts complete() calls not yet consumed by a waiter.
 */
struct completion {
	unsigned int done;
};
static inline void init_completion(struct completion *x)
{
	x->done = 0;
}
static inline void reinit_completion(struct completion *x)
{
	x->done = 0;
}
void complete(struct completion *x);
void wait_for_completion(struct completion *x);
/* Returns 0 on timeout, else the jiffies left (at least 1). */
unsigned long wait_for_completion_timeout(struct completion *x, unsigned long timeout);
bool try_wait_for_completion(struct completion *x);

/*
 * ---- tasklets (include/linux/interrupt.h, kernel/softirq.c) ----
 * The channel callback runs as a tasklet. disable waits for a running callback to finish and
 * keeps it from starting; enable lets it run again (pending packets make it runnable).
 */
struct tasklet_struct {
	int disable_count;
	void *kshim;
};
void tasklet_disable(struct tasklet_struct *t);
void tasklet_disable_in_atomic(struct tasklet_struct *t);
void tasklet_enable(struct tasklet_struct *t);

/*
 * ---- workqueues (include/linux/workqueue.h, kernel/workqueue.c) ----
 * An ordered workqueue runs one item at a time in queueing order; queue_work on a pending
 * item does nothing and returns false.
 */
struct work_struct;
typedef void (*work_func_t)(struct work_struct *work);
struct work_struct {
	unsigned long pending;
	struct list_head entry;
	work_func_t func;
};
static inline void INIT_WORK(struct work_struct *work, work_func_t func)
{
	work->pending = 0;
	INIT_LIST_HEAD(&work->entry);
	work->func = func;
}
struct workqueue_struct;
#define WQ_UNBOUND (1u << 1)
#define WQ_MEM_RECLAIM (1u << 3)
#define __WQ_ORDERED (1u << 17)
__printf(1, 4) struct workqueue_struct *alloc_workqueue(const char *fmt, unsigned int flags,
							int max_active, ...);
#define alloc_ordered_workqueue(fmt, flags, ...) \
	alloc_workqueue(fmt, WQ_UNBOUND | __WQ_ORDERED | (flags), 1, ##__VA_ARGS__)
bool queue_work(struct workqueue_struct *wq, struct work_struct *work);
void flush_workqueue(struct workqueue_struct *wq);
void destroy_workqueue(struct workqueue_struct *wq);

#endif /* KSHIM_SYNC_H */
