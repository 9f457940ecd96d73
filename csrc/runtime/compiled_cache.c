/* Compiled-model cache entries, the layout of edgeseg/runtime/compiled_cache.py: a folder
 * ROOT/SHA16-KEY12 of OpenVINO's files plus "entry.sha256" (one "HEX SIZE NAME" line per file).
 * An entry is built in a private ".partial-*" folder and published with one rename; it is used
 * only when every file matches its record and nothing unrecorded is present, otherwise it is
 * moved aside, deleted and rebuilt. A killed process's ".partial-*" or "*.stale-*" folder is removed
 * by the next miss once it is an hour old (ORPHAN_SECONDS in compiled_cache.py: a PID cannot say
 * whether its writer is gone when the cache is shared across PID namespaces). The record says
 * only that an entry is whole, not who made it: the cache folder, the entry and its files must
 * belong to this user and be writable by no group and no other user, else no cache is used. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "es_compiled_cache.h"

#define RECORD "entry.sha256"
#define MAX_FILES 64
#define ORPHAN_SECONDS 3600

/* 1 when no other user can have written or replaced `path` (or it does not exist): no symbolic
 * link unless `follow`, owned by the effective user, no group or other write bit. */
static int private_path(const char *path, int follow) {
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0) return errno == ENOENT;
    return !S_ISLNK(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & 022);
}

/* Drop the group and other write bits the umask left on a file the engine wrote. */
static int drop_shared_write(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode) && chmod(path, st.st_mode & 07755) == 0 ? 0 : -1;
}

/* mkdir -p; 0 when `path` is a folder afterwards. Folders it makes are 0700. */
static int make_folders(const char *path) {
    char buf[ES_CACHE_PATH];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    struct stat st;
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* Delete a flat folder of files (the only kind an entry is). */
static void remove_folder(const char *path) {
    DIR *dir = opendir(path);
    if (!dir) return;
    struct dirent *item;
    char file[ES_CACHE_PATH];
    while ((item = readdir(dir)) != NULL) {
        if (!strcmp(item->d_name, ".") || !strcmp(item->d_name, "..")) continue;
        if (snprintf(file, sizeof file, "%s/%s", path, item->d_name) < (int)sizeof file) unlink(file);
    }
    closedir(dir);
    rmdir(path);
}

static int file_sha256(const char *path, char hex[65]) {
    FILE *fh = fopen(path, "rb");
    if (!fh) return -1;
    int rc = es_sha256_file(fh, hex);
    fclose(fh);
    return rc;
}

/* Whether `entry` holds exactly the files of its record, each of the recorded size and sha256. */
static int entry_verified(const char *entry) {
    char path[ES_CACHE_PATH], line[ES_CACHE_PATH], names[MAX_FILES][256];
    int count = 0, ok = 1;
    snprintf(path, sizeof path, "%s/" RECORD, entry);
    if (!private_path(entry, 0) || !private_path(path, 0)) return 0;
    FILE *record = fopen(path, "r");
    if (!record) return 0;
    while (ok && fgets(line, sizeof line, record)) {
        char digest[65], hex[65];
        long long size = -1;
        int name_at = 0;
        line[strcspn(line, "\n")] = '\0';
        struct stat st;
        ok = count < MAX_FILES && sscanf(line, "%64s %lld %n", digest, &size, &name_at) == 2 && name_at > 0 &&
             strlen(line + name_at) < sizeof names[0] && !strchr(line + name_at, '/') &&
             snprintf(path, sizeof path, "%s/%s", entry, line + name_at) < (int)sizeof path &&
             lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & 022) &&
             (long long)st.st_size == size &&
             file_sha256(path, hex) == 0 && strcmp(hex, digest) == 0;
        if (ok) snprintf(names[count++], sizeof names[0], "%s", line + name_at);
    }
    fclose(record);
    DIR *dir = ok && count > 0 ? opendir(entry) : NULL;
    if (!dir) return 0;
    struct dirent *item;
    while (ok && (item = readdir(dir)) != NULL) {
        const char *name = item->d_name;
        int known = !strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, RECORD);
        for (int i = 0; i < count && !known; i++) known = !strcmp(name, names[i]);
        ok = known;
    }
    closedir(dir);
    return ok;
}

/* Remove the leftovers of killed processes in `root` unchanged for ORPHAN_SECONDS. */
static void sweep_leftovers(const char *root) {
    DIR *dir = opendir(root);
    if (!dir) return;
    time_t now = time(NULL);
    struct dirent *item;
    char path[ES_CACHE_PATH];
    struct stat st;
    while ((item = readdir(dir)) != NULL) {
        const char *name = item->d_name;
        if (strncmp(name, ".partial-", 9) != 0 && !strstr(name, ".stale-")) continue;
        if (snprintf(path, sizeof path, "%s/%s", root, name) >= (int)sizeof path) continue;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && now - st.st_mtime > ORPHAN_SECONDS) remove_folder(path);
    }
    closedir(dir);
}

static int new_partial(es_cache_entry *e, const char *root, const char *name) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int n = snprintf(e->partial, sizeof e->partial, "%s/.partial-%s-%ld-%08lx", root, name, (long)getpid(),
                     (unsigned long)now.tv_nsec);
    if (n >= (int)sizeof e->partial || mkdir(e->partial, 0700) != 0) e->partial[0] = '\0';
    return e->partial[0] ? 0 : -1;
}

void es_cache_discard(es_cache_entry *e) {
    char trash[ES_CACHE_PATH];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (snprintf(trash, sizeof trash, "%s.stale-%ld-%08lx", e->final, (long)getpid(), (unsigned long)now.tv_nsec) >=
        (int)sizeof trash)
        return;
    /* One rename takes it out of every reader's way; deleting the files comes after. */
    if (rename(e->final, trash) == 0) remove_folder(trash);
}

void es_cache_prepare(const char *root, const char *sha256, const char *engine_key, es_cache_entry *e) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    char name[64], key_hex[13];
    memset(e, 0, sizeof *e);
    if (!root || !*root || EVP_Digest(engine_key, strlen(engine_key), digest, &len, EVP_sha256(), NULL) != 1) return;
    for (int i = 0; i < 6; i++) snprintf(key_hex + 2 * i, 3, "%02x", digest[i]);
    snprintf(name, sizeof name, "%.16s-%s", sha256, key_hex);
    if (snprintf(e->final, sizeof e->final, "%s/%s", root, name) >= (int)sizeof e->final) {
        e->final[0] = '\0';
        return;
    }
    struct stat st;
    if (!private_path(root, 1)) { /* another user could have planted entries: build without the cache */
        e->final[0] = '\0';
        return;
    }
    if (stat(e->final, &st) == 0) {
        if (entry_verified(e->final)) {
            e->hit = 1;
            return;
        }
        es_cache_discard(e);
    }
    if (make_folders(root) == 0 && private_path(root, 1)) {
        sweep_leftovers(root);
        new_partial(e, root, name);
    }
}

const char *es_cache_folder(const es_cache_entry *e) { return e->hit ? e->final : e->partial[0] ? e->partial : NULL; }

void es_cache_abandon(es_cache_entry *e) {
    if (e->partial[0]) remove_folder(e->partial);
    e->partial[0] = '\0';
}

/* Write the record of the partial folder's files into it. */
static int write_record(const char *partial) {
    char path[ES_CACHE_PATH], tmp[ES_CACHE_PATH], hex[65];
    DIR *dir = opendir(partial);
    if (!dir) return -1;
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", partial, RECORD);
    FILE *out = fopen(tmp, "w");
    int files = 0, ok = out != NULL;
    struct dirent *item;
    while (ok && (item = readdir(dir)) != NULL) {
        struct stat st;
        if (item->d_name[0] == '.') continue; /* ".", ".." and the record being written */
        ok = snprintf(path, sizeof path, "%s/%s", partial, item->d_name) < (int)sizeof path &&
             drop_shared_write(path) == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode) && file_sha256(path, hex) == 0 &&
             fprintf(out, "%s %lld %s\n", hex, (long long)st.st_size, item->d_name) > 0;
        files++;
    }
    closedir(dir);
    if (out && fclose(out) != 0) ok = 0;
    if (ok && drop_shared_write(tmp) != 0) ok = 0;
    snprintf(path, sizeof path, "%s/" RECORD, partial);
    return ok && files > 0 && rename(tmp, path) == 0 ? 0 : -1;
}

void es_cache_publish(es_cache_entry *e) {
    if (!e->partial[0]) return;
    /* A failed rename means another process published first (or the record failed): ours goes. */
    if (write_record(e->partial) != 0 || rename(e->partial, e->final) != 0) remove_folder(e->partial);
    e->partial[0] = '\0';
}
