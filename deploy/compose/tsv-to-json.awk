# NSMC TSV (header: id<TAB>document<TAB>label) -> one line per review: id<TAB>{"id":..,"text":..,"label":..}
# The first field becomes the Kafka key (kafka-console-producer parse.key=true, key.separator=TAB).
# POSIX awk (gawk, mawk, busybox); run with LC_ALL=C so that UTF-8 bytes pass through untouched.
# Variables: rate (records per second, 0 = as fast as possible).
function json_string(s) {
    gsub(/\\/, "\\\\", s)
    gsub(/"/, "\\\"", s)
    gsub(/[\001-\037\177]/, " ", s)
    return "\"" s "\""
}
BEGIN { FS = "\t"; sent = 0 }
NR == 1 && $1 == "id" { next }
NF >= 2 && $1 != "" {
    label = ($3 == "0" || $3 == "1") ? $3 : "null"
    printf "%s\t{\"id\":%s,\"text\":%s,\"label\":%s}\n", $1, json_string($1), json_string($2), label
    sent++
    if (rate > 0 && sent % rate == 0) { fflush(); system("sleep 1") }
}
END { fflush() }
