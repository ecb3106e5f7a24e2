/* SPDX-License-Identifier: MIT */
/*
 * kshim core: basic types, compiler attributes, errno values, lists, bit operations, atomics,
 * refcounts, memory allocation and printk, as far as pci-hyperv.c uses them.
 *
 * Written for this project from what the driver calls; no kernel header text is copied. Each
 * group names the kernel file whose semantics it follows.
 */
#ifndef KSHIM_CORE_H
#define KSHIM_CORE_H

#ifndef KSHIM_KVER
#error "compile with -DKSHIM_KVER=510, 601 or 612"
#endif

/* ---- types (include/linux/types.h, include/uapi/asm-generic/int-ll64.h) ---- */
typedef unsigned char u8;
typedef signed char s8;
typedef unsigned short u16;
typedef short s16;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
typedef long long s64;
typedef u8 __u8;
typedef u16 __u16;
typedef u32 __u32;
typedef u64 __u64;
typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
typedef u64 phys_addr_t;
typedef u64 resource_size_t;
typedef unsigned int gfp_t;
typedef unsigned long kernel_ulong_t;
typedef unsigned long irq_hw_number_t;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_end(ap) __builtin_va_end(ap)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_copy(d, s) __builtin_va_copy(d, s)

#define true 1
#define false 0
#define NULL ((void *)0)
#define U64_MAX (~0ULL)
#define U32_MAX (~0U)
#define SIZE_MAX (~(size_t)0)
#define BITS_PER_LONG 64

/* ---- compiler (include/linux/compiler_types.h, compiler_attributes.h) ---- */
#define __packed __attribute__((__packed__))
#define __aligned(x) __attribute__((__aligned__(x)))
#define __iomem
#define __init
#define __exit
#define __must_check __attribute__((__warn_unused_result__))
#define __printf(a, b) __attribute__((__format__(printf, a, b)))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define offsetof(type, member) __builtin_offsetof(type, member)
/*
 * include/linux/compiler_attributes.h (6.5 on): names the member holding a flexible array's
 * element count, for the bounds sanitizer; only where the compiler knows the attribute.
 */
#ifdef __has_attribute
#if __has_attribute(__counted_by__)
#define __counted_by(member) __attribute__((__counted_by__(member)))
#endif
#endif
#ifndef __counted_by
#define __counted_by(member)
#endif
/* include/linux/stddef.h: offset of the first byte after a member. */
#define offsetofend(type, member) \
	(offsetof(type, member) + sizeof(((type *)0)->member))
/* include/linux/container_of.h */
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
/* include/linux/build_bug.h */
#define BUILD_BUG_ON(cond) _Static_assert(!(cond), "BUILD_BUG_ON(" #cond ")")
/* include/linux/array_size.h */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* include/linux/minmax.h (without the kernel's type check). */
#define min(a, b) ({ __typeof__(a) __ka = (a); __typeof__(b) __kb = (b); \
	__ka < __kb ? __ka : __kb; })
/* include/linux/math.h: round up to a power-of-two multiple; wraps like the kernel's. */
#define round_up(x, y) ((((x) - 1) | ((__typeof__(x))((y) - 1))) + 1)

/*
 * include/linux/overflow.h: size of a struct with a flexible array of n elements, saturating
 * at SIZE_MAX instead of wrapping (the host controls n).
 */
static inline size_t kshim_struct_size(size_t base, size_t elem, size_t n)
{
	size_t bytes;

	if (__builtin_mul_overflow(elem, n, &bytes) ||
	    __builtin_add_overflow(bytes, base, &bytes))
		return SIZE_MAX;
	return bytes;
}
#define struct_size(p, member, n) \
	kshim_struct_size(sizeof(*(p)), sizeof(*(p)->member), (n))

/* ---- errno (include/uapi/asm-generic/errno-base.h, errno.h) ---- */
#define EIO 5
#define EAGAIN 11
#define ENOMEM 12
#define EBUSY 16
#define ENODEV 19
#define EINVAL 22
#define ENOSPC 28
#define ENOTEMPTY 39
#define ENOBUFS 105
#define ETIMEDOUT 110
#define ENOENT 2
#define EPROTO 71

/* include/linux/err.h */
#define MAX_ERRNO 4095
#define IS_ERR_VALUE(x) unlikely((unsigned long)(void *)(x) >= (unsigned long)-MAX_ERRNO)
static inline void *ERR_PTR(long error) { return (void *)error; }
static inline long PTR_ERR(const void *ptr) { return (long)ptr; }
static inline bool IS_ERR(const void *ptr) { return IS_ERR_VALUE((unsigned long)ptr); }

/* ---- barriers and atomics (arch/x86/include/asm/barrier.h, cmpxchg.h) ---- */
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define wmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
/* xchg: stores v, returns the old value, a full barrier. */
#define xchg(ptr, v) __atomic_exchange_n((ptr), (v), __ATOMIC_SEQ_CST)
/* cmpxchg: stores new only if *ptr == old; returns the value found. */
#define cmpxchg(ptr, old, new) ({ \
	__typeof__(*(ptr)) __kold = (old); \
	__atomic_compare_exchange_n((ptr), &__kold, (new), 0, \
				    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
	__kold; })

typedef struct { int counter; } atomic_t;

/*
 * include/linux/refcount.h: a counter that saturates and warns instead of wrapping. An
 * increment from zero (use after free) or a decrement below zero is reported to the runtime
 * through refcount_warn_saturate(), as in lib/refcount.c.
 */
typedef struct { atomic_t refs; } refcount_t;
enum refcount_saturation_type {
	REFCOUNT_ADD_NOT_ZERO_OVF,
	REFCOUNT_ADD_OVF,
	REFCOUNT_ADD_UAF,
	REFCOUNT_SUB_UAF,
	REFCOUNT_DEC_LEAK,
};
void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t);
static inline void refcount_set(refcount_t *r, int n)
{
	__atomic_store_n(&r->refs.counter, n, __ATOMIC_RELAXED);
}
static inline unsigned int refcount_read(const refcount_t *r)
{
	return __atomic_load_n(&r->refs.counter, __ATOMIC_RELAXED);
}
static inline void refcount_inc(refcount_t *r)
{
	int old = __atomic_fetch_add(&r->refs.counter, 1, __ATOMIC_RELAXED);

	if (unlikely(old <= 0))
		refcount_warn_saturate(r, old ? REFCOUNT_ADD_OVF : REFCOUNT_ADD_UAF);
}
static inline bool refcount_dec_and_test(refcount_t *r)
{
	int old = __atomic_fetch_sub(&r->refs.counter, 1, __ATOMIC_RELEASE);

	if (old == 1) {
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		return true;
	}
	if (unlikely(old <= 0))
		refcount_warn_saturate(r, REFCOUNT_SUB_UAF);
	return false;
}

/* ---- bit operations (include/linux/bitops.h, include/linux/find.h) ---- */
#define BITS_TO_LONGS(n) (((n) + BITS_PER_LONG - 1) / BITS_PER_LONG)
#define DECLARE_BITMAP(name, bits) unsigned long name[BITS_TO_LONGS(bits)]
#define BIT_WORD(nr) ((nr) / BITS_PER_LONG)
#define BIT_MASK(nr) (1UL << ((nr) % BITS_PER_LONG))
/* Atomic read-modify-write of one bit, as arch/x86/include/asm/bitops.h. */
static inline void set_bit(long nr, volatile unsigned long *addr)
{
	__atomic_fetch_or(&addr[BIT_WORD(nr)], BIT_MASK(nr), __ATOMIC_RELAXED);
}
static inline void clear_bit(long nr, volatile unsigned long *addr)
{
	__atomic_fetch_and(&addr[BIT_WORD(nr)], ~BIT_MASK(nr), __ATOMIC_RELAXED);
}
static inline bool test_and_set_bit(long nr, volatile unsigned long *addr)
{
	return (__atomic_fetch_or(&addr[BIT_WORD(nr)], BIT_MASK(nr),
				  __ATOMIC_SEQ_CST) & BIT_MASK(nr)) != 0;
}
static inline bool test_bit(long nr, const volatile unsigned long *addr)
{
	return (addr[BIT_WORD(nr)] & BIT_MASK(nr)) != 0;
}
/* lib/find_bit.c: index of the next clear bit at or after start, or size. */
static inline unsigned long find_next_zero_bit(const unsigned long *addr,
					       unsigned long size,
					       unsigned long start)
{
	for (; start < size; start++)
		if (!test_bit(start, addr))
			return start;
	return size;
}
static inline unsigned long find_next_bit(const unsigned long *addr,
					  unsigned long size,
					  unsigned long start)
{
	for (; start < size; start++)
		if (test_bit(start, addr))
			return start;
	return size;
}
#define for_each_clear_bit(bit, addr, size) \
	for ((bit) = find_next_zero_bit((addr), (size), 0); (bit) < (size); \
	     (bit) = find_next_zero_bit((addr), (size), (bit) + 1))

/* ---- lists (include/linux/list.h): circular doubly-linked, head is a sentinel ---- */
struct list_head {
	struct list_head *next, *prev;
};
#define LIST_HEAD_INIT(name) { &(name), &(name) }
static inline void INIT_LIST_HEAD(struct list_head *list)
{
	list->next = list;
	list->prev = list;
}
static inline void __list_add(struct list_head *new, struct list_head *prev,
			      struct list_head *next)
{
	next->prev = new;
	new->next = next;
	new->prev = prev;
	prev->next = new;
}
static inline void list_add(struct list_head *new, struct list_head *head)
{
	__list_add(new, head, head->next);
}
static inline void list_add_tail(struct list_head *new, struct list_head *head)
{
	__list_add(new, head->prev, head);
}
/* Poison values as include/linux/poison.h, so a use after list_del faults. */
#define LIST_POISON1 ((void *)0x100)
#define LIST_POISON2 ((void *)0x122)
static inline void __list_del_entry(struct list_head *entry)
{
	entry->next->prev = entry->prev;
	entry->prev->next = entry->next;
}
static inline void list_del(struct list_head *entry)
{
	__list_del_entry(entry);
	entry->next = LIST_POISON1;
	entry->prev = LIST_POISON2;
}
static inline void list_move_tail(struct list_head *list, struct list_head *head)
{
	__list_del_entry(list);
	list_add_tail(list, head);
}
static inline int list_empty(const struct list_head *head)
{
	return head->next == head;
}
#define list_entry(ptr, type, member) container_of(ptr, type, member)
#define list_first_entry(ptr, type, member) list_entry((ptr)->next, type, member)
#define list_next_entry(pos, member) \
	list_entry((pos)->member.next, __typeof__(*(pos)), member)
#define list_for_each_entry(pos, head, member) \
	for (pos = list_first_entry(head, __typeof__(*pos), member); \
	     &pos->member != (head); pos = list_next_entry(pos, member))
#define list_for_each_entry_safe(pos, n, head, member) \
	for (pos = list_first_entry(head, __typeof__(*pos), member), \
	     n = list_next_entry(pos, member); &pos->member != (head); \
	     pos = n, n = list_next_entry(n, member))

/* ---- memory (include/linux/slab.h, include/linux/gfp.h) ---- */
/*
 * GFP flags only tell the runtime the caller's context: __GFP_DIRECT_RECLAIM means the caller
 * may sleep (GFP_KERNEL); GFP_ATOMIC and GFP_NOWAIT callers hold spinlocks or run in the
 * channel callback and must not be scheduled away.
 */
#define __GFP_HIGH 0x20u
#define __GFP_KSWAPD_RECLAIM 0x800u
#define __GFP_DIRECT_RECLAIM 0x400u
#define __GFP_IO 0x40u
#define __GFP_FS 0x80u
#define __GFP_ZERO 0x100u
#define GFP_ATOMIC (__GFP_HIGH | __GFP_KSWAPD_RECLAIM)
#define GFP_NOWAIT (__GFP_KSWAPD_RECLAIM)
#define GFP_KERNEL (__GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM | __GFP_IO | __GFP_FS)
void *kmalloc(size_t size, gfp_t flags);
void *kzalloc(size_t size, gfp_t flags);
void kfree(const void *ptr);
__printf(2, 3) char *kasprintf(gfp_t gfp, const char *fmt, ...);

/* ---- strings: the C library's, as lib/string.c behaves the same ---- */
void *memcpy(void *dest, const void *src, size_t n);
void *memset(void *s, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
__printf(3, 4) int snprintf(char *buf, size_t size, const char *fmt, ...);

/* ---- printk (include/linux/printk.h, include/linux/kern_levels.h) ---- */
#define KERN_SOH "\001"
#define KERN_ERR KERN_SOH "3"
#define KERN_WARNING KERN_SOH "4"
#define KERN_INFO KERN_SOH "6"
#define KERN_DEBUG KERN_SOH "7"
__printf(1, 2) int printk(const char *fmt, ...);
#define pr_err(fmt, ...) printk(KERN_ERR fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...) printk(KERN_WARNING fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...) printk(KERN_INFO fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...) ({ if (0) printk(KERN_DEBUG fmt, ##__VA_ARGS__); })

/*
 * include/asm-generic/bug.h: WARN_ON_ONCE reports the first time its condition holds (the
 * runtime records a WARN, which a harness may treat as a guest failure) and yields the
 * condition.
 */
void kshim_warn(const char *file, int line, const char *cond);
#define WARN_ON_ONCE(cond) ({ \
	static bool __kwarned; \
	int __kcond = !!(cond); \
	if (unlikely(__kcond) && !__kwarned) { \
		__kwarned = true; \
		kshim_warn(__FILE__, __LINE__, #cond); \
	} \
	unlikely(__kcond); })

/*
 * ---- per-CPU data (include/linux/percpu-defs.h, lib/smp_processor_id.c) ----
 * The runtime interleaves contexts as if each had its own CPU, so a per-CPU variable has one
 * copy per context: this_cpu_ptr(p) is the running context's copy of the per-CPU object p.
 * As with CONFIG_DEBUG_PREEMPT, using it while preemptible (no spinlock held, interrupts on)
 * is reported as a BUG: another context could then be "on the same CPU".
 */
void *kshim_this_cpu_ptr(const void *ptr, size_t size);
#define this_cpu_ptr(ptr) \
	((__typeof__(ptr))kshim_this_cpu_ptr((const void *)(ptr), sizeof(*(ptr))))

/* ---- module plumbing (include/linux/module.h, include/linux/init.h) ---- */
struct module;
#define THIS_MODULE ((struct module *)0)
#ifndef KBUILD_MODNAME
#define KBUILD_MODNAME "pci_hyperv"
#endif
#define MODULE_DESCRIPTION(s)
#define MODULE_LICENSE(s)
#define MODULE_DEVICE_TABLE(type, name)
/* The harness's only two entry points, as a loadable module exports them. */
#define module_init(fn) int init_module(void) __attribute__((alias(#fn)));
#define module_exit(fn) void cleanup_module(void) __attribute__((alias(#fn)));

/* ---- sizes (include/linux/sizes.h, arch/x86/include/asm/page_types.h) ---- */
#define SZ_16K 0x4000
#define PAGE_SIZE 4096UL
#define PAGE_ALIGN(x) (((x) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))

#endif /* KSHIM_CORE_H */
