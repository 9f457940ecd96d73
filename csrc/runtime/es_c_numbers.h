/* Private to libedgeseg: the "C" locale's numbers ("0.5", never "0,5") for this thread, whatever
 * LC_NUMERIC the application set, around a formatting or parsing step (error.c). */
#ifndef ES_C_NUMBERS_H
#define ES_C_NUMBERS_H

#include <locale.h>

/* Make the "C" locale this thread's; returns what to give es_c_numbers_restore (0: unchanged,
 * where no "C" locale_t could be made). */
locale_t es_c_numbers_use(void);
void es_c_numbers_restore(locale_t before);

#endif
