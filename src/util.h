/* Small helpers shared by the loaders. */
#ifndef FLASHMOE_UTIL_H
#define FLASHMOE_UTIL_H
#include <stddef.h>

/* Whole file into a NUL-terminated buffer (free with free). NULL with "PATH: reason" in err. */
char *util_read_file(const char *path, size_t *len, char *err, size_t errlen);
/* dir + "/" + name into out; -1 if it does not fit. */
int util_path_join(char *out, size_t outlen, const char *dir, const char *name);
int util_file_exists(const char *path);
double util_now_seconds(void);
/* printf into err (one line for the user); nothing when err is NULL or errlen 0 */
void util_err_set(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
