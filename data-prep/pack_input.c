/* What mobiletune-pack packs: the input listing (a folder of class subfolders, a folder of split
 * folders, or a "path label" list file); pack_select.c chooses among the items. Nothing here
 * opens an image: the listing only stats, so a folder of any size costs memory for its names
 * alone. */
#include "pack.h"

#include "mobiletune/files.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct name_list {
    char **names;
    size_t count, capacity;
} name_list;

static mt_status name_list_add(name_list *list, const char *name) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        char **grown = realloc(list->names, capacity * sizeof *grown);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory listing files");
        list->names = grown;
        list->capacity = capacity;
    }
    list->names[list->count] = strdup(name);
    if (!list->names[list->count]) return MT_FAIL(MT_ERR_NOMEM, "out of memory listing files");
    list->count++;
    return MT_OK;
}

static void name_list_free(name_list *list) {
    for (size_t i = 0; i < list->count; i++)
        free(list->names[i]);
    free(list->names);
    *list = (name_list){0};
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Entries of `dir` except "." / ".." and hidden ones, sorted bytewise (locale-independent, so
 * class ids and record order are the same on every machine). */
static mt_status list_dir(const char *dir, name_list *out) {
    DIR *d = opendir(dir);
    if (!d) return MT_FAIL(MT_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *entry;
    mt_status status = MT_OK;
    errno = 0;
    while ((entry = readdir(d)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        status = name_list_add(out, entry->d_name);
        if (status != MT_OK) break;
    }
    if (status == MT_OK && errno != 0)
        status = MT_FAIL(MT_ERR_IO, "%s: cannot read folder: %s", dir, strerror(errno));
    closedir(d);
    if (status == MT_OK && out->count > 1)
        qsort(out->names, out->count, sizeof(char *), compare_names);
    return status;
}

static char *join_path(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static mt_status add_skip(pack_input *in, const char *name, const char *reason) {
    pack_skip *grown = realloc(in->skips, (in->skip_count + 1) * sizeof *grown);
    if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    in->skips = grown;
    grown[in->skip_count].name = strdup(name);
    grown[in->skip_count].reason = strdup(reason);
    if (!grown[in->skip_count].name || !grown[in->skip_count].reason)
        return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    in->skip_count++;
    return MT_OK;
}

typedef struct item_list {
    pack_item *items;
    size_t count, capacity;
} item_list;

/* Takes ownership of path and name. */
static mt_status add_item(item_list *list, char *path, char *name, uint32_t label) {
    if (!path || !name) {
        free(path);
        free(name);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory listing files");
    }
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 256;
        pack_item *grown = realloc(list->items, capacity * sizeof *grown);
        if (!grown) {
            free(path);
            free(name);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory listing files");
        }
        list->items = grown;
        list->capacity = capacity;
    }
    list->items[list->count++] =
        (pack_item){.path = path, .name = name, .label = label, .split = -1, .folder = -1};
    return MT_OK;
}

/* A regular file becomes an item; anything else is a listed skip (never silently dropped). */
static mt_status add_path(pack_input *in, item_list *items, char *path, char *name,
                          uint32_t label) {
    struct stat st;
    const char *reason = NULL;
    char buffer[300];
    if (stat(path, &st) != 0) {
        snprintf(buffer, sizeof buffer, "cannot stat: %s", strerror(errno));
        reason = buffer;
    } else if (S_ISDIR(st.st_mode)) {
        reason = "is a folder, not an image file (class folders are one level deep)";
    } else if (!S_ISREG(st.st_mode)) {
        reason = "not a regular file";
    }
    if (reason) {
        mt_status status = add_skip(in, name, reason);
        free(path);
        free(name);
        return status;
    }
    return add_item(items, path, name, label);
}

/* The class folders of `dir` into `classes` (other entries become skips named `prefix`/entry). */
static mt_status list_class_folders(const char *dir, const char *prefix, pack_input *in,
                                    name_list *classes) {
    name_list top = {0};
    MT_TRY(list_dir(dir, &top));
    mt_status status = MT_OK;
    for (size_t i = 0; i < top.count && status == MT_OK; i++) {
        char *path = join_path(dir, top.names[i]);
        struct stat st;
        if (!path) {
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        } else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            status = name_list_add(classes, top.names[i]);
        } else if (prefix) {
            char *name = join_path(prefix, top.names[i]);
            status = name ? add_skip(in, name, "not inside a class subfolder")
                          : MT_FAIL(MT_ERR_NOMEM, "out of memory");
            free(name);
        } else {
            status = add_skip(in, top.names[i], "not inside a class subfolder");
        }
        free(path);
    }
    name_list_free(&top);
    if (status == MT_OK && classes->count == 0)
        status = MT_FAIL(MT_ERR_INVALID,
                         "%s: no class subfolders: put each class's images in "
                         "its own subfolder (e.g. %s/cats, %s/dogs) or pass a 'path label' list "
                         "file",
                         dir, dir, dir);
    if (status == MT_OK && classes->count > MT_MAX_CLASSES)
        status = MT_FAIL(MT_ERR_INVALID, "%s: %zu class subfolders, more than %d", dir,
                         classes->count, MT_MAX_CLASSES);
    return status;
}

/* The files of each class folder of `dir` as items (named `prefix`/class/file, or class/file). */
static mt_status list_class_files(const char *dir, const char *prefix, const name_list *classes,
                                  int folder, pack_input *in, item_list *items) {
    mt_status status = MT_OK;
    for (size_t c = 0; c < classes->count && status == MT_OK; c++) {
        char *class_dir = join_path(dir, classes->names[c]);
        char *class_name =
            prefix ? join_path(prefix, classes->names[c]) : strdup(classes->names[c]);
        name_list files = {0};
        status = class_dir && class_name ? list_dir(class_dir, &files)
                                         : MT_FAIL(MT_ERR_NOMEM, "out of memory");
        size_t first = items->count;
        for (size_t f = 0; f < files.count && status == MT_OK; f++)
            status = add_path(in, items, join_path(class_dir, files.names[f]),
                              join_path(class_name, files.names[f]), (uint32_t)c);
        for (size_t i = first; i < items->count; i++)
            items->items[i].folder = folder;
        name_list_free(&files);
        free(class_dir);
        free(class_name);
    }
    return status;
}

/* Which split a folder name stands for in a pre-split INPUT (-1: none). */
static int split_folder_kind(const char *name) {
    if (strcmp(name, "train") == 0) return PACK_FOLDER_TRAIN;
    if (strcmp(name, "validation") == 0 || strcmp(name, "val") == 0) return PACK_FOLDER_VAL;
    if (strcmp(name, "test") == 0) return PACK_FOLDER_TEST;
    return -1;
}

/* INPUT is pre-split when every subfolder it holds is named train, validation, val or test,
 * train is among them, and each of them holds a subfolder (its class folders): a class folder
 * named "train" holds image files, not folders, so a folder of classes is never taken for one
 * of splits. `dirs` are INPUT's subfolders. */
static mt_status detect_split_folders(const char *input, const name_list *dirs, pack_input *in,
                                      bool *presplit) {
    *presplit = false;
    if (dirs->count == 0) return MT_OK;
    int found[PACK_FOLDER_COUNT] = {-1, -1, -1};
    for (size_t i = 0; i < dirs->count; i++) {
        int kind = split_folder_kind(dirs->names[i]);
        if (kind < 0) return MT_OK;
        if (found[kind] >= 0)
            return MT_FAIL(MT_ERR_INVALID,
                           "%s holds both %s/ and %s/: a pre-split folder has one validation "
                           "folder; rename or move one of them",
                           input, dirs->names[found[kind]], dirs->names[i]);
        found[kind] = (int)i;
    }
    if (found[PACK_FOLDER_TRAIN] < 0) return MT_OK;
    for (size_t i = 0; i < dirs->count; i++) {
        char *dir = join_path(input, dirs->names[i]);
        name_list entries = {0};
        mt_status status = dir ? list_dir(dir, &entries) : MT_FAIL(MT_ERR_NOMEM, "out of memory");
        bool has_folder = false;
        for (size_t e = 0; e < entries.count && status == MT_OK && !has_folder; e++) {
            char *path = join_path(dir, entries.names[e]);
            struct stat st;
            has_folder = path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
            free(path);
        }
        name_list_free(&entries);
        free(dir);
        if (status != MT_OK) return status;
        if (!has_folder) return MT_OK;
    }
    for (int k = 0; k < PACK_FOLDER_COUNT; k++)
        if (found[k] >= 0) {
            snprintf(in->split_folders[k], sizeof in->split_folders[k], "%s",
                     dirs->names[found[k]]);
            in->split_folder_count++;
        }
    *presplit = true;
    return MT_OK;
}

/* "a, b, c" of a class list, cut to fit. */
static void describe_classes(const name_list *classes, char *out, size_t capacity) {
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < classes->count && used + 1 < capacity; i++)
        used +=
            (size_t)snprintf(out + used, capacity - used, "%s%s", i ? ", " : "", classes->names[i]);
}

static mt_status list_folder(const char *input, pack_input *in, item_list *items) {
    name_list dirs = {0};
    mt_status status = list_class_folders(input, NULL, in, &dirs);
    bool presplit = false;
    if (status == MT_OK) status = detect_split_folders(input, &dirs, in, &presplit);
    name_list classes = {0};
    if (status == MT_OK && !presplit) {
        classes = dirs;
        dirs = (name_list){0};
        status = list_class_files(input, NULL, &classes, -1, in, items);
    }
    /* Pre-split: every split folder's classes, which must be the first one's (train's), so one
     * class list (ids by sorted name, as for a folder) serves every split. */
    for (int k = 0; presplit && status == MT_OK && k < PACK_FOLDER_COUNT; k++) {
        const char *folder = in->split_folders[k];
        if (!folder[0]) continue;
        char *dir = join_path(input, folder);
        name_list these = {0};
        status = dir ? list_class_folders(dir, folder, in, &these)
                     : MT_FAIL(MT_ERR_NOMEM, "out of memory");
        if (status == MT_OK && classes.names) {
            bool same = these.count == classes.count;
            for (size_t c = 0; same && c < these.count; c++)
                same = strcmp(these.names[c], classes.names[c]) == 0;
            if (!same) {
                char a[512], b[512];
                describe_classes(&classes, a, sizeof a);
                describe_classes(&these, b, sizeof b);
                status = MT_FAIL(MT_ERR_INVALID,
                                 "%s/%s/ holds the classes %s but %s/%s/ holds %s: the split "
                                 "folders of a pre-split input must hold the same class folders "
                                 "(labels are positions in one class list)",
                                 input, in->split_folders[PACK_FOLDER_TRAIN], a, input, folder, b);
            }
        }
        if (status == MT_OK) status = list_class_files(dir, folder, &these, k, in, items);
        if (status == MT_OK && !classes.names) {
            classes = these;
            these = (name_list){0};
        }
        name_list_free(&these);
        free(dir);
    }
    name_list_free(&dirs);
    if (status == MT_OK) {
        in->class_count = (int)classes.count;
        in->class_names = classes.names; /* ownership moves */
        classes.names = NULL;
        classes.count = 0;
    }
    name_list_free(&classes);
    return status;
}

static bool is_class_id(const char *s) {
    if (!*s || strlen(s) > 6) return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return atol(s) < MT_MAX_CLASSES;
}

/* A list file: one "path label" per line; the label is the last whitespace-separated word, so
 * paths may hold spaces. Blank lines and lines starting with '#' are ignored. Relative paths are
 * relative to the list file's folder. When every label is a decimal integer they are class ids
 * (classes 0..max, named by their number); otherwise every label is a class name and ids follow
 * the sorted names, as for a folder. */
static mt_status list_file(const char *input, pack_input *in, item_list *items) {
    int fd;
    MT_TRY(mt_file_open_read(input, "list file", &fd));
    FILE *file = fdopen(fd, "r");
    if (!file) {
        close(fd);
        return MT_FAIL(MT_ERR_NOMEM, "%s: cannot read the list file: %s", input, strerror(errno));
    }
    char *base = strdup(input);
    if (!base) {
        fclose(file);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    char *slash = strrchr(base, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(base, ".");
    name_list paths = {0}, labels = {0};
    mt_status status = MT_OK;
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    long line_number = 0;
    while (status == MT_OK && (length = getline(&line, &capacity, file)) >= 0) {
        line_number++;
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r'))
            line[--length] = '\0';
        char *start = line;
        while (*start == ' ' || *start == '\t')
            start++;
        if (*start == '\0' || *start == '#') continue;
        char *end = start + strlen(start);
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        char *split = end;
        while (split > start && split[-1] != ' ' && split[-1] != '\t')
            split--;
        char *label = split;
        while (split > start && (split[-1] == ' ' || split[-1] == '\t'))
            split--;
        if (split == start) {
            status = MT_FAIL(MT_ERR_INVALID,
                             "%s:%ld: want 'path label' (e.g. 'cats/1.jpg cats' "
                             "or 'img/1.jpg 0'), got '%s'",
                             input, line_number, start);
            break;
        }
        *split = '\0';
        status = name_list_add(&paths, start);
        if (status == MT_OK) status = name_list_add(&labels, label);
    }
    if (status == MT_OK && ferror(file))
        status = MT_FAIL(MT_ERR_IO, "%s: read error: %s", input, strerror(errno));
    free(line);
    fclose(file);
    if (status == MT_OK && paths.count == 0)
        status = MT_FAIL(MT_ERR_INVALID,
                         "%s: the list file names no images: write one "
                         "'path label' per line",
                         input);
    bool numeric = true;
    for (size_t i = 0; i < labels.count && numeric; i++)
        numeric = is_class_id(labels.names[i]);
    name_list classes = {0};
    if (status == MT_OK && numeric) {
        long max = 0;
        for (size_t i = 0; i < labels.count; i++)
            if (atol(labels.names[i]) > max) max = atol(labels.names[i]);
        char number[24];
        for (long c = 0; c <= max && status == MT_OK; c++) {
            snprintf(number, sizeof number, "%ld", c);
            status = name_list_add(&classes, number);
        }
    } else if (status == MT_OK) {
        name_list sorted = {0};
        for (size_t i = 0; i < labels.count && status == MT_OK; i++)
            status = name_list_add(&sorted, labels.names[i]);
        if (sorted.count > 1) qsort(sorted.names, sorted.count, sizeof(char *), compare_names);
        for (size_t i = 0; i < sorted.count && status == MT_OK; i++)
            if (i == 0 || strcmp(sorted.names[i], sorted.names[i - 1]) != 0)
                status = name_list_add(&classes, sorted.names[i]);
        name_list_free(&sorted);
        if (status == MT_OK && classes.count > MT_MAX_CLASSES)
            status = MT_FAIL(MT_ERR_INVALID, "%s: %zu classes, more than %d", input, classes.count,
                             MT_MAX_CLASSES);
    }
    for (size_t i = 0; i < paths.count && status == MT_OK; i++) {
        uint32_t label;
        if (numeric) {
            label = (uint32_t)atol(labels.names[i]);
        } else {
            char **found = bsearch(&labels.names[i], classes.names, classes.count, sizeof(char *),
                                   compare_names);
            label = (uint32_t)(found - classes.names);
        }
        char *path =
            paths.names[i][0] == '/' ? strdup(paths.names[i]) : join_path(base, paths.names[i]);
        status = add_path(in, items, path, strdup(paths.names[i]), label);
    }
    if (status == MT_OK) {
        in->class_count = (int)classes.count;
        in->class_names = classes.names;
        classes.names = NULL;
        classes.count = 0;
    }
    name_list_free(&classes);
    name_list_free(&paths);
    name_list_free(&labels);
    free(base);
    return status;
}

mt_status pack_input_list(const char *input, pack_input *in) {
    *in = (pack_input){0};
    struct stat st;
    if (stat(input, &st) != 0)
        return MT_FAIL(MT_ERR_IO,
                       "%s: %s (give a folder of class subfolders or a 'path label' "
                       "list file)",
                       input, strerror(errno));
    item_list items = {0};
    mt_status status =
        S_ISDIR(st.st_mode) ? list_folder(input, in, &items) : list_file(input, in, &items);
    in->items = items.items;
    in->item_count = items.count;
    if (status != MT_OK) pack_input_free(in);
    return status;
}

void pack_input_free(pack_input *in) {
    for (size_t i = 0; i < in->item_count; i++) {
        free(in->items[i].path);
        free(in->items[i].name);
    }
    for (size_t i = 0; i < in->skip_count; i++) {
        free(in->skips[i].name);
        free(in->skips[i].reason);
    }
    for (int c = 0; c < in->class_count; c++)
        free(in->class_names[c]);
    free(in->class_names);
    free(in->items);
    free(in->skips);
    *in = (pack_input){0};
}
